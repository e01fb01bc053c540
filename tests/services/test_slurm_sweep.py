"""`dapt sweep --launcher slurm` on the real two-node test cluster (scripts/services.sh), run as a user runs it: the
job array's tables equal the local launcher's, its flags reach Slurm, a finished sweep submits nothing, and a job
cancelled with `scancel` is reported, then resubmitted by the next sweep and resumed from its last checkpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny import REPO, TINY_CONFIG, read_metrics

from dapt_lightning.experiments.claims import RUNNING_FILE, claim_record, claimed, is_stale
from dapt_lightning.experiments.sweep import load_sweep, plan, run_status, summarize, sweep_main

pytestmark = [pytest.mark.services, pytest.mark.slow]

QUIET = {"trainer.logger": False, "trainer.enable_progress_bar": False, "embedding_plots.enabled": False}


def write_sweep(path: Path, root: Path, **sweep: object) -> Path:
    """A sweep of the tiny config on the synthetic data, its runs in ``<path's folder>/<path's stem>``."""
    settings = {"runs_dir": str(path.with_suffix("")), "datasets": {"synthetic": str(TINY_CONFIG)}, "shots": [2]}
    settings.update(sweep)
    settings["overrides"] = {"data.root": str(root), **QUIET, **sweep.get("overrides", {})}  # type: ignore[dict-item]
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def user_env() -> dict[str, str]:
    """This environment with its `dapt` first on the PATH, as after `pip install`."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


def dapt_sweep(*args: str, expect: int = 0) -> str:
    """``dapt sweep ARGS`` in a fresh process; its output."""
    result = subprocess.run(
        ["dapt", "sweep", *args], capture_output=True, text=True, timeout=600, env=user_env(), cwd=REPO
    )
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def submitted_jobs(output: str) -> list[str]:
    """The job ids a `dapt sweep --launcher slurm` printed."""
    found = re.search(r"\[sweep\] submitted \d+ jobs: (\S.*) \(logs in", output)
    assert found, output
    return found.group(1).split(", ")


def accounting(job_ids: list[str]) -> list[dict[str, str]]:
    """Slurm's accounting of each job: id, state, time limit, CPUs, start and end (epoch seconds)."""
    fields = ["JobID", "State", "Timelimit", "AllocCPUS", "Start", "End"]
    answer = subprocess.run(
        ["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", ",".join(job_ids)]
        + ["--format", ",".join(fields)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "SLURM_TIME_FORMAT": "%s"},
    )
    return [dict(zip(fields, line.split("|"), strict=True)) for line in answer.stdout.splitlines()]


def settled_accounting(job_ids: list[str], timeout: float = 60.0) -> list[dict[str, str]]:
    """:func:`accounting` once every job has left the running states: `--wait` returns when a job's result file is
    written, which can be before the job itself has ended and slurmdbd has recorded it."""
    deadline = time.monotonic() + timeout
    while True:
        records = accounting(job_ids)
        settled = all(record["State"] not in ("PENDING", "RUNNING", "COMPLETING") for record in records)
        if settled or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def most_at_once(jobs: list[dict[str, str]]) -> int:
    """The largest number of ``jobs`` that ran at the same time."""
    spans = [(int(job["Start"]), int(job["End"])) for job in jobs]
    return max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)


def test_a_slurm_sweep_equals_the_local_sweep_and_a_finished_one_submits_nothing(
    slurm_nodes: list[str], synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = {"methods": ["zeroshot", "dapt"], "seeds": [1, 2]}
    local = write_sweep(tmp_path / "local.yaml", synthetic_root, **grid)
    on_slurm = write_sweep(tmp_path / "slurm.yaml", synthetic_root, **grid)
    assert sweep_main([str(local)]) == 0
    capsys.readouterr()

    flags = ["--launcher", "slurm", "--wait", "--time_min", "10", "--cpus_per_run", "1", "--array_parallelism", "2"]
    output = dapt_sweep(str(on_slurm), *flags)
    jobs = submitted_jobs(output)
    runs = plan(load_sweep(on_slurm))
    assert len(jobs) == len(runs) == 3 and "[sweep] 3 done, 0 failed" in output  # zero-shot once, DAPT per seed
    # One job array whose tasks kept to the flags: 10 minutes, 1 CPU, never more than 2 running at once.
    assert len({job.split("_")[0] for job in jobs}) == 1
    records = settled_accounting(jobs)
    assert [record["JobID"] for record in records] == jobs
    assert {(record["State"], record["Timelimit"], record["AllocCPUS"]) for record in records} == {
        ("COMPLETED", "00:10:00", "1")
    }
    assert most_at_once(records) <= 2

    # Each run's folder, and the same numbers as the local sweep, table for table.
    for run, local_run in zip(runs, plan(load_sweep(local)), strict=True):
        assert run.finished and run.run_dir.relative_to(tmp_path / "slurm") == local_run.run_dir.relative_to(
            tmp_path / "local"
        )
        assert read_metrics(run.run_dir)["test"]["test/acc"] == read_metrics(local_run.run_dir)["test"]["test/acc"]
    tables = summarize(tmp_path / "slurm", tmp_path / "tables_slurm")
    local_tables = summarize(tmp_path / "local", tmp_path / "tables_local")
    assert tables.keys() == local_tables.keys() and "fewshot" in tables
    for name, path in tables.items():
        if path.suffix in (".md", ".tex"):
            assert path.read_text() == local_tables[name].read_text(), name

    # The same sweep again: everything is finished, nothing goes to Slurm.
    again = dapt_sweep(str(on_slurm), *flags)
    assert "[sweep] 3 runs, 3 finished already" in again and "nothing to submit" in again
    assert "submitted" not in again


def test_a_cancelled_job_is_reported_and_the_next_sweep_resubmits_and_resumes_it(
    slurm_nodes: list[str], synthetic_root: Path, tmp_path: Path
) -> None:
    epochs = 12
    sweep = write_sweep(
        tmp_path / "long.yaml", synthetic_root, methods=["dapt"], seeds=[1], overrides={"trainer.max_epochs": epochs}
    )
    (run,) = plan(load_sweep(sweep))
    command = ["dapt", "sweep", str(sweep), "--launcher", "slurm", "--wait", "--time_min", "10"]
    waiting = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=user_env(), cwd=REPO
    )
    try:
        output = ""
        while "submitted" not in output:
            line = waiting.stdout.readline()  # type: ignore[union-attr]
            assert line, output
            output += line
        (job,) = submitted_jobs(output)
        deadline = time.time() + 120
        while not (run.run_dir / "checkpoints/last.ckpt").is_file():  # a first epoch done, more to come
            assert time.time() < deadline and waiting.poll() is None, output
            time.sleep(0.2)
        subprocess.run(["scancel", job], check=True)
        rest, _ = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    # The waiting sweep names the run and its job, and fails.
    assert waiting.returncode == 1, output + rest
    assert f"FAILED {run.name}: job {job}" in rest
    assert accounting([job])[0]["State"].startswith("CANCELLED")
    # Slurm's SIGTERM reached the run, which kept it in error.txt and released its folder.
    status = run_status(run)
    assert status.state == "failed" and status.detail.startswith("interrupted by SIGTERM"), status

    # The next sweep submits that run again; it resumes from its last checkpoint and finishes.
    output = dapt_sweep(str(sweep), "--launcher", "slurm", "--wait", "--time_min", "10")
    (resubmitted,) = submitted_jobs(output)
    assert resubmitted != job and "[sweep] 1 done, 0 failed" in output
    assert run.finished and read_metrics(run.run_dir)["epochs"] == epochs
    job_log = "".join(path.read_text() for path in (tmp_path / "long" / ".submitit").rglob(f"{resubmitted}_*.out"))
    assert "--ckpt_path last" in job_log, job_log


def test_the_readme_job_array_runs_one_run_per_task(
    slurm_nodes: list[str], synthetic_root: Path, tmp_path: Path
) -> None:
    sweep = write_sweep(tmp_path / "array.yaml", synthetic_root, methods=["zeroshot", "coop"], seeds=[1])
    # The README's job array, without its GPU request (the test cluster has none).
    script = f"""
N=$(dapt sweep {sweep} --print_commands | wc -l)
sbatch --array=0-$((N - 1))%2 --cpus-per-task=1 --time=10 --output={tmp_path}/slurm-%A_%a.out \\
  --wrap 'dapt sweep {sweep} --index $SLURM_ARRAY_TASK_ID'
"""
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=user_env())
    assert result.returncode == 0 and result.stdout.startswith("Submitted batch job"), result.stdout + result.stderr
    array = result.stdout.split()[-1]
    deadline = time.time() + 300
    while subprocess.run(["squeue", "--noheader", "--jobs", array], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, f"job array {array} still queued or running"
        time.sleep(0.5)
    runs = plan(load_sweep(sweep))
    assert len(runs) == 2 and all(run.finished for run in runs)
    logs = sorted(tmp_path.glob("slurm-*_*.out"))
    assert len(logs) == 2
    for index, (log, run) in enumerate(zip(logs, runs, strict=True)):
        assert log.name.endswith(f"_{index}.out") and f"--run.dir {run.run_dir}" in log.read_text(), log.read_text()


def test_a_claim_from_a_slurm_job_on_another_host_is_stale_once_the_job_has_left_the_queue(
    slurm_nodes: list[str], tmp_path: Path
) -> None:
    # A process in a Slurm job records the job in its claim.
    show = "import json; from dapt_lightning.experiments.claims import claim_record; print(json.dumps(claim_record()))"
    answer = subprocess.run(
        ["srun", "--nodes", "1", sys.executable, "-c", show], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(answer.stdout)["slurm_job"].isdigit()

    # A run held by a job on another node (a host whose pids cannot be checked from here): held while the job is
    # queued or running; stale once it has left the queue (killed outright: a node failure, the OOM killer).
    job = subprocess.run(
        ["sbatch", "--parsable", "--output", str(tmp_path / "sleep.out"), "--wrap", "sleep 300"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    claim = {**claim_record(), "host": "another-node", "slurm_job": job}
    (run_dir / RUNNING_FILE).write_text(json.dumps(claim))
    try:
        assert not is_stale(claim)
        with claimed(run_dir) as ours:
            assert not ours
    finally:
        subprocess.run(["scancel", job], check=True)
    deadline = time.time() + 60
    while not is_stale(claim):
        assert time.time() < deadline, f"job {job} still in the queue"
        time.sleep(0.5)
    with claimed(run_dir) as ours:  # the next worker takes the run over
        assert ours
