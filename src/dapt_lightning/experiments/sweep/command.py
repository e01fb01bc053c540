"""``dapt sweep FILE``: run a sweep's plan in this process, one run at a time, or print it for a job array."""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback

from dapt_lightning.experiments.lightning_cli import cli_main
from dapt_lightning.experiments.runs import last_checkpoint
from dapt_lightning.experiments.sweep import plan as sweep_file
from dapt_lightning.experiments.sweep.plan import Run, load_sweep, plan
from dapt_lightning.experiments.sweep.tables import summarize_main
from dapt_lightning.loggers import finish_wandb_runs


def execute(run: Run) -> None:
    """Run the unfinished steps of ``run`` in this process (resuming a fit from its last checkpoint)."""
    for step in run.steps:
        if step.finished:
            print(f"[sweep] done already: {step.run_dir}", flush=True)
            continue
        args = list(step.args)
        if args[-2:] == ["--ckpt_path", "last"] and not last_checkpoint(step.run_dir).is_file():
            args = args[:-2]  # nothing to resume: start fresh (Lightning would only warn)
        print(f"[sweep] dapt {shlex.join(args)}", flush=True)
        cli = None
        try:
            cli = cli_main(args)
        finally:
            finish_wandb_runs(getattr(cli, "trainer", None))


def sweep_main(argv: list[str]) -> int:
    """``dapt sweep FILE [--print-commands | --index K | --list]`` and ``dapt sweep summarize``."""
    if argv and argv[0] == "summarize":
        return summarize_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="dapt sweep", description=sweep_file.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", help="sweep file (configs/sweeps/*.yaml); `dapt sweep summarize -h` for tables")
    parser.add_argument("--print-commands", action="store_true", help="print one shell line per run (job arrays)")
    parser.add_argument("--index", type=int, default=None, help="run only run K (0-based; e.g. $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--list", action="store_true", help="list the runs with their index and status")
    args = parser.parse_args(argv)
    runs = plan(load_sweep(args.sweep))
    if args.print_commands:
        for run in runs:
            print(run.command())
        return 0
    if args.list:
        for index, run in enumerate(runs):
            status = "done" if run.finished else "todo"
            print(f"{index:4d}  {status}  {run.dataset} {run.method} {run.shots}shots seed{run.seed}")
        return 0
    if args.index is not None:
        if not 0 <= args.index < len(runs):
            parser.error(f"--index must be in [0, {len(runs) - 1}], got {args.index}")
        runs = [runs[args.index]]
    failed = []
    for run in runs:
        if run.finished:
            print(f"[sweep] skip finished: {run.dataset} {run.method} {run.shots}shots seed{run.seed}", flush=True)
            continue
        try:
            execute(run)
        except Exception:  # one broken run must not stop a night's sweep; it is reported at the end
            traceback.print_exc()
            failed.append(run)
    for run in failed:
        print(f"[sweep] FAILED: {run.command()}", file=sys.stderr)
    return 1 if failed else 0
