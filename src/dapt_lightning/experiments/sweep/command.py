"""``dapt sweep FILE``: run a sweep (here, in local workers, or on Slurm), list its runs' status, print its commands."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import yaml

from dapt_lightning.arguments import ActionYesNo, ArgumentParser, UsageError, command_parser, parse
from dapt_lightning.experiments.sweep import plan as sweep_file
from dapt_lightning.experiments.sweep.launch import BUSY, DONE, FAILED, launch_slurm, run_local
from dapt_lightning.experiments.sweep.plan import Run, load_sweep, plan, skipped_variants
from dapt_lightning.experiments.sweep.status import STATES, run_status
from dapt_lightning.experiments.sweep.summary import summarize_main

SLURM_FLAGS: dict[str, tuple[str, type, int | None, str]] = {
    "time_min": ("timeout_min", int, 1, "each job's time limit in minutes (sbatch --time)"),
    "cpus_per_run": ("cpus_per_task", int, 1, "CPUs per job (sbatch --cpus-per-task); the run uses that many threads"),
    "gpus_per_run": ("gpus_per_node", int, 0, "GPUs per job (sbatch --gpus-per-node)"),
    "mem_gb": ("mem_gb", int, 1, "memory per job in GB (sbatch --mem)"),
    "partition": ("slurm_partition", str, None, "the partition to submit to (sbatch --partition)"),
    "array_parallelism": ("slurm_array_parallelism", int, 1, "at most N runs of the job array at once (--array=..%N)"),
}
"""``dapt sweep`` flag -> (submitit's executor parameter, type, smallest value, what it sets)."""


def build_parser() -> ArgumentParser:
    """The ``dapt sweep FILE`` parser (``dapt sweep summarize`` has its own, ``tables.py``)."""
    parser = command_parser("dapt sweep", sweep_file.__doc__)
    parser.add_argument("sweep", help="sweep file (configs/sweeps/*.yaml); `dapt sweep summarize --help` for tables")
    parser.add_argument("--list", action=ActionYesNo, default=False, help="list every run: index, status, folder")
    parser.add_argument(
        "--print_commands", action=ActionYesNo, default=False, help="print one shell line per run (job arrays)"
    )
    parser.add_argument("--index", type=int | None, default=None, help="run only run K (e.g. $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--workers", type=int, default=1, help="run N runs at once in local processes")
    parser.add_argument(
        "--launcher", type=Literal["local", "slurm"], default="local", help="slurm: submit a job array (submitit)"
    )
    for flag, (_, kind, _, what) in SLURM_FLAGS.items():
        parser.add_argument(f"--{flag}", type=kind | None, default=None, help=f"--launcher slurm: {what}")
    parser.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other submitit parameter for --launcher slurm, repeatable: slurm_account=ml, "
        "slurm_constraint=a100, slurm_qos=high, ...",
    )
    parser.add_argument("--wait", action=ActionYesNo, default=False, help="--launcher slurm: wait and report")
    return parser


def _slurm_parameters(args: Any) -> dict[str, Any]:
    parameters = {}
    for flag, (key, _, smallest, _) in SLURM_FLAGS.items():
        value = getattr(args, flag)
        if smallest is not None and value is not None and value < smallest:
            raise UsageError(f"--{flag} must be >= {smallest}, got {value}")
        if value is not None:
            parameters[key] = value
    for item in args.slurm:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--slurm takes KEY=VALUE (e.g. timeout_min=600), got {item!r}")
        parameters[key] = yaml.safe_load(value)
    return parameters


def list_runs(runs: list[Run], skipped: dict[str, str]) -> None:
    """Print each run's index, status and folder, the variants not run, and the count per status."""
    counts: Counter[str] = Counter()
    width = max((len(run.name) for run in runs), default=0)
    for index, run in enumerate(runs):
        status = run_status(run)
        counts[status.state] += 1
        detail = f"  {status.detail}" if status.detail else ""
        print(f"{index:4d}  {status.state:<7}  {run.name:<{width}}  {run.run_dir}{detail}")
    for name, reason in skipped.items():
        print(f"      not run  variant {name}: {reason}")
    print(f"{len(runs)} runs: " + ", ".join(f"{counts[state]} {state}" for state in STATES))


def _report(outcomes: dict[str, list[Run]]) -> int:
    busy = f", {len(outcomes[BUSY])} run by other workers" if outcomes[BUSY] else ""
    print(f"[sweep] {len(outcomes[DONE])} done, {len(outcomes[FAILED])} failed{busy}", flush=True)
    for run in outcomes[FAILED]:
        print(f"[sweep] FAILED: {run.name} (error in {run.run_dir})", file=sys.stderr)
    return 1 if outcomes[FAILED] else 0


def sweep_main(argv: list[str]) -> int:
    """``dapt sweep FILE [--list | --print_commands | --index K] [--workers N | --launcher slurm]``.

    ``dapt sweep summarize ...`` writes the tables (``tables.py``). Returns 1 when a run failed.
    """
    if argv and argv[0] == "summarize":
        return summarize_main(argv[1:])
    args = parse(build_parser(), argv)
    if sum((args.list, args.print_commands, args.index is not None)) > 1:
        raise UsageError("--list, --print_commands and --index go one at a time")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    slurm_only = [f"--{flag}" for flag in SLURM_FLAGS if getattr(args, flag) is not None]
    slurm_only += ["--slurm"] * bool(args.slurm) + ["--wait"] * args.wait
    if args.launcher != "slurm" and slurm_only:
        raise UsageError(f"{', '.join(slurm_only)}: only with --launcher slurm")
    if args.launcher == "slurm" and (args.workers > 1 or args.index is not None):
        raise UsageError("--launcher slurm runs one job per run: drop --workers and --index")
    slurm_parameters = _slurm_parameters(args)
    sweep = load_sweep(args.sweep)
    runs = plan(sweep)
    skipped = skipped_variants(sweep)
    if args.print_commands:
        for run in runs:
            print(run.command())
        return 0
    if args.list:
        list_runs(runs, skipped)
        return 0
    for name, reason in skipped.items():
        print(f"[sweep] variant {name} is not run: {reason}", flush=True)
    if args.index is not None:
        if not 0 <= args.index < len(runs):
            raise UsageError(f"--index must be in [0, {len(runs) - 1}], got {args.index}")
        return _report(run_local([runs[args.index]]))
    pending = [run for run in runs if not run.finished]
    print(f"[sweep] {len(runs)} runs, {len(runs) - len(pending)} finished already", flush=True)
    if args.launcher == "slurm":
        pending = [run for run in pending if run_status(run).state != "running"]
        if not pending:
            print("[sweep] nothing to submit", flush=True)
            return 0
        folder = Path(sweep["runs_dir"]) / ".submitit"
        outcomes = launch_slurm(pending, folder, slurm_parameters, wait=args.wait)
        if outcomes is None:
            print(f"[sweep] `dapt sweep {args.sweep} --list` shows their progress", flush=True)
            return 0
        return _report(outcomes)
    return _report(run_local(pending, args.workers))
