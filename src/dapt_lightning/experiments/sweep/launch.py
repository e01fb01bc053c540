"""Running a sweep's runs: one after another in this process, in N local worker processes, or as Slurm jobs.

Whatever runs it, a grid point goes through :func:`execute_run`: claim it (``claims.py``), run its unfinished steps
with ``run.execute`` in that process (a fit resumes from ``last.ckpt``), keep a failure's error in ``error.txt``,
release the claim. A failed run never stops the others; the caller turns failures into a non-zero exit status.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from dapt_lightning.experiments.claims import ERROR_FILE, claimed, write_error
from dapt_lightning.experiments.run import RunInterrupted, execute, failure_line, interruptible
from dapt_lightning.experiments.runs import last_checkpoint
from dapt_lightning.experiments.sweep.plan import Run, Step
from dapt_lightning.experiments.workers import die_with_parent

DONE, FAILED, BUSY = "done", "failed", "busy"
"""What :func:`execute_run` reports: the run is finished, it failed, or another worker holds it."""


def _run_step(step: Step) -> None:
    spec = step.spec
    if spec.settings.get("ckpt_path") == "last" and not last_checkpoint(step.run_dir).is_file():
        spec = spec.without("ckpt_path")  # nothing to resume: start fresh (Lightning would only warn)
    print(f"[sweep] {shlex.join(spec.command_line())}", flush=True)
    execute(spec)


def _summary(error: BaseException) -> str:
    if isinstance(error, RunInterrupted):
        return f"interrupted by {error} (a rerun resumes from the last checkpoint)"
    return failure_line(error)


def execute_run(run: Run) -> str:
    """Run the unfinished steps of ``run`` in this process, if no other worker holds it.

    Returns:
        ``done``, ``failed`` (the error is in the run folder's ``error.txt``) or ``busy`` (claimed elsewhere).

    Raises:
        RunInterrupted: on SIGINT or SIGTERM, after recording it in ``error.txt``.
    """
    if run.finished:
        print(f"[sweep] done already: {run.name}", flush=True)
        return DONE
    with claimed(run.run_dir) as ours:
        if not ours:
            print(f"[sweep] another worker runs {run.name}; skipping it", flush=True)
            return BUSY
        for step in run.steps:
            if step.finished:
                continue
            try:
                with interruptible():  # also between steps: the claim is released and the reason kept
                    _run_step(step)
            except (Exception, SystemExit, RunInterrupted) as error:
                summary = _summary(error)
                details = f"step: {step.kind}\ncommand: {shlex.join(step.spec.command_line())}\n\n"
                path = write_error(run.run_dir, summary, details + "".join(traceback.format_exception(error)))
                print(f"[sweep] FAILED {run.name}: {summary}\n  error kept in {path}", file=sys.stderr, flush=True)
                if isinstance(error, RunInterrupted):
                    raise
                return FAILED
        (run.run_dir / ERROR_FILE).unlink(missing_ok=True)  # an earlier attempt's error no longer applies
        return DONE


def _start_worker(threads: int, parent: int) -> None:
    import torch

    die_with_parent(parent)  # a sweep killed outright leaves no worker behind (its claims turn stale)
    torch.set_num_threads(threads)


def run_local(runs: list[Run], workers: int = 1) -> dict[str, list[Run]]:
    """Run ``runs`` here: in this process (``workers`` 1) or in ``workers`` processes at once, sharing the CPUs.

    Returns:
        The runs by outcome (``done``, ``failed``, ``busy``).
    """
    outcomes: dict[str, list[Run]] = {DONE: [], FAILED: [], BUSY: []}
    if workers <= 1:
        for run in runs:
            outcomes[execute_run(run)].append(run)
        return outcomes
    threads = max(1, (os.cpu_count() or 1) // workers)
    import multiprocessing

    # spawn: a fresh interpreter per worker (forking a process that already ran torch can deadlock its thread pools).
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(threads, os.getpid()))
    with interruptible():
        try:
            futures = {pool.submit(execute_run, run): run for run in runs}
            for count, future in enumerate(as_completed(futures), 1):
                run = futures[future]
                try:
                    outcome = future.result()
                except Exception as error:  # the worker process died (killed, out of memory): its claim is stale
                    print(f"[sweep] FAILED {run.name}: its worker died ({error!r})", file=sys.stderr, flush=True)
                    outcome = FAILED
                outcomes[outcome].append(run)
                print(f"[sweep] {count}/{len(runs)} {outcome}: {run.name}", flush=True)
        finally:
            # On an interrupt, start no further run; the running ones end (or record their own interrupt).
            pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


def run_as_slurm_job(run: Run) -> str:
    """:func:`execute_run` inside a Slurm job, on as many threads as the job has CPUs (``--cpus_per_run``)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus:  # without a CPU binding torch would start a thread per core of the node, shared with other jobs
        import torch

        torch.set_num_threads(int(cpus))
    return execute_run(run)


def launch_slurm(
    runs: list[Run],
    folder: Path,
    parameters: dict[str, Any],
    wait: bool = False,
    cluster: str = "slurm",
) -> dict[str, list[Run]] | None:
    """Submit ``runs`` as one Slurm job array through submitit; each job executes one run.

    Args:
        runs: the runs to submit.
        folder: where submitit keeps job scripts and logs (``%j`` is the job id).
        parameters: submitit executor parameters (``timeout_min``, ``gpus_per_node``, ``slurm_partition``, ...).
        wait: wait for the jobs and return their outcomes; otherwise return None once submitted.
        cluster: submitit's executor (``slurm``; tests use ``local``, which runs the jobs as local processes).
    """
    try:
        import submitit
    except ImportError as error:
        raise RuntimeError(
            "--launcher slurm needs submitit: pip install 'dapt_lightning[slurm]', or use a job array of "
            "`dapt sweep FILE --index $SLURM_ARRAY_TASK_ID` (README, Sweeps)"
        ) from error
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise RuntimeError(
            "--launcher slurm: no `sbatch` on this machine; submit from a Slurm login node, "
            "or run the sweep here with --workers N"
        )
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    executor.update_parameters(**{"name": "dapt-sweep", **parameters})
    jobs = executor.map_array(run_as_slurm_job, runs)
    print(f"[sweep] submitted {len(jobs)} jobs: {', '.join(job.job_id for job in jobs)} (logs in {folder})", flush=True)
    if not wait:
        return None
    outcomes: dict[str, list[Run]] = {DONE: [], FAILED: [], BUSY: []}
    for job, run in zip(jobs, runs, strict=True):
        try:
            outcome = job.result()
        except Exception as error:  # the job died before execute() could record it (time limit, node failure)
            print(f"[sweep] FAILED {run.name}: job {job.job_id} ({error})", file=sys.stderr, flush=True)
            outcome = FAILED
        outcomes[outcome].append(run)
    return outcomes
