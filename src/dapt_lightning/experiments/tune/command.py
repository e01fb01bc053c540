"""``dapt tune --config configs/<dataset>.yaml``: search the learning rate and DAPT's dispersion weights (or any
settings of a space file) on the dataset's few-shot validation split with Optuna (TPE, median pruning), then train
the best settings once more and test them.

Every other flag (``--data.num_shots 4``, ``--data.root DIR``, more ``--config`` files) goes to each fit, in order.
Start the same command in several terminals, or as several jobs with one ``--storage`` database, and the workers
share the study; rerun it after a kill and the study goes on.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import statistics
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from dapt_lightning.experiments.lightning_cli import quiet_console
from dapt_lightning.experiments.runs import METRICS_FILE, read_metrics
from dapt_lightning.experiments.sweep.claims import claimed
from dapt_lightning.experiments.tune.fit import ValidateLastEpoch, close, fit, run_args
from dapt_lightning.experiments.tune.objective import Objective, seed_value
from dapt_lightning.experiments.tune.report import (
    log_to_wandb,
    overlay_header,
    trial_rows,
    write_figures,
    write_overlay,
    write_summary,
    write_trials_csv,
)
from dapt_lightning.experiments.tune.space import DEFAULT_SPACE, SearchSpace, load_space
from dapt_lightning.experiments.tune.study import (
    STATE_NAMES,
    FolderLock,
    StudyFolder,
    count_states,
    open_study,
    search,
)
from dapt_lightning.storage import ensure_writable_dir

RESERVED = {
    "--seed_everything": "use --seeds",
    "--run.dir": "trials go to OUT/NAME/trials/: choose --out and --name",
    "--run.root": "trials go to OUT/NAME/trials/: choose --out and --name",
    "--run.test_after_fit": "trials are never tested; the best settings are, once, at the end",
    "--ckpt_path": "every trial starts from the config",
}
"""``dapt fit`` flags that ``dapt tune`` sets for each fit, and what to do instead."""
CATCH = (FloatingPointError,)
"""Errors that fail one trial and let the search go on: settings that diverge (a NaN loss) are a result."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dapt tune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--seed...` or `--s...` of a fit flag must not be taken for one of ours
    )
    parser.add_argument("--space", default=str(DEFAULT_SPACE), help="search space YAML (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=30, help="finished trials the study needs (default 30)")
    parser.add_argument("--seeds", default="1", help="fit each trial with these seeds, e.g. 1,2,3 (default 1)")
    parser.add_argument("--out", default="tuned", help="where OUT/NAME.yaml and the study folder go (default tuned)")
    parser.add_argument("--name", default=None, help="study name (default: the first --config file's name)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///OUT/NAME/study.db)")
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        help="seconds between a trial's heartbeats; a silent trial is failed after twice that (default 60)",
    )
    return parser


def _seeds(parser: argparse.ArgumentParser, text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds takes distinct integers separated by commas, e.g. 1,2,3; got {text!r}")
    return seeds


def _configs(fit_args: list[str]) -> list[str]:
    configs = [value for flag, value in zip(fit_args, fit_args[1:], strict=False) if flag == "--config"]
    return configs + [arg.split("=", 1)[1] for arg in fit_args if arg.startswith("--config=")]


def _check_fit_args(parser: argparse.ArgumentParser, fit_args: list[str]) -> None:
    for arg in fit_args:
        flag = arg.split("=", 1)[0]
        if flag in RESERVED:
            parser.error(f"{flag} is set by dapt tune for every fit: {RESERVED[flag]}")
    for config in _configs(fit_args):
        if not Path(config).is_file():
            parser.error(f"--config {config} does not exist")


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, a Slurm time limit) interrupts like Ctrl-C, so the running trial is recorded as failed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        if signal.getsignal(signal.SIGTERM) is not interrupt:
            # Inside a fit, Lightning's own handler called this one, and ends the fit at its next step with
            # SIGTERMException (a SystemExit, which the trial records as an interruption).
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_line(trial: FrozenTrial, counts: Counter[str], target: int, names: list[str]) -> str:
    """The one line printed per trial: number, state, value, the settings ``names``, time, progress."""
    value = trial.value
    if value is None and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    shown = "val/acc -     " if value is None else f"val/acc {value:.4f}"
    settings = "  ".join(f"{name} {_format(trial.params[name])}" for name in names if name in trial.params)
    seconds = trial.duration.total_seconds() if trial.duration is not None else 0.0
    state = STATE_NAMES.get(trial.state, trial.state.name.lower())
    return (
        f"[tune] trial {trial.number:<3d} {state:<8} {shown}  {settings}  "
        f"({seconds:.0f} s; {counts['finished']}/{target} finished)"
    )


def check_seeds(study: optuna.Study, seeds: list[int]) -> None:
    """A study's trials are comparable only with the same seeds: record them, or refuse other ones."""
    recorded = study.user_attrs.get("seeds")
    if recorded is None:
        study.set_user_attr("seeds", seeds)
    elif recorded != seeds:
        raise ValueError(
            f"study {study.study_name!r} was started with --seeds {','.join(map(str, recorded))}: join it with the "
            "same seeds, or start another study (--name)"
        )


def _wandb_target(cli: Any, folder: StudyFolder) -> dict[str, Any] | None:
    """Where the study's W&B run goes: the project and mode of the final run's W&B logger (None: no W&B)."""
    for logger in cli.trainer.loggers:
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "project"):
            group = f"tune-{folder.name}"
            mode = experiment.settings.mode
            # Absolute: W&B's service process resolves a relative folder against its own working directory.
            where = str(folder.root.resolve())
            return {"project": experiment.project, "mode": mode, "dir": where, "name": group, "group": group}
    return None


def train_best(
    best: FrozenTrial, fit_args: list[str], seeds: list[int], folder: StudyFolder
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Fit the overlay's settings once per seed and test them (each seed once: a finished run is read back).

    Returns:
        Per seed: its folder, val/acc and test/acc; and the W&B target of the study's run (None: no W&B).
    """
    results, target = [], None
    for seed in seeds:
        run_dir = folder.final_dir(best.number) / f"seed{seed}"
        if not (run_dir / METRICS_FILE).is_file():
            with claimed(run_dir) as ours:
                if not ours:
                    print(f"[tune] another worker trains the best settings with seed {seed} ({run_dir})", flush=True)
                    continue
                print(f"[tune] training the best settings (trial {best.number}) with seed {seed}, then testing")
                args = [*fit_args, "--config", str(folder.overlay), *run_args(run_dir, seed, trial=False)]
                cli = None
                try:
                    name = f"tune-{folder.name}-best-seed{seed}"
                    cli, _ = fit(args, ValidateLastEpoch(), hide_test=False, run_name=name, group=f"tune-{folder.name}")
                    target = target or _wandb_target(cli, folder)
                finally:
                    close(cli)
        metrics = read_metrics(run_dir / METRICS_FILE)
        results.append(
            {
                "seed": seed,
                "folder": str(run_dir),
                "val_acc": metrics["fit"].get("val/acc"),
                "trial_val_acc": seed_value(best, seed),
                "test_acc": metrics["test"].get("test/acc"),
            }
        )
    return results, target


def _mean(values: list[Any]) -> float | None:
    numbers = [v for v in values if v is not None]
    return statistics.fmean(numbers) if numbers else None


def _summary_lines(summary: dict[str, Any], folder: StudyFolder, fit_args: list[str]) -> list[str]:
    settings = "  ".join(f"{name} {_format(value)}" for name, value in summary["settings"].items())
    trials = summary["trials"]
    lines = [
        f"[tune] study {summary['study']!r}: {trials['finished']} trials finished ({trials['complete']} complete, "
        f"{trials['pruned']} pruned), {trials['failed']} failed",
        f"[tune] best: trial {summary['best_trial']}, val/acc {summary['val_acc']:.4f}  {settings}",
    ]
    for final in summary["final"]:
        val, test = final["val_acc"], final["test_acc"]
        lines.append(
            f"[tune] best settings trained again, seed {final['seed']}: val/acc "
            f"{'-' if val is None else f'{val:.4f}'}, test/acc {'-' if test is None else f'{test:.4f}'}  "
            f"({final['folder']})"
        )
    lines += [
        f"  overlay    {folder.overlay}   (dapt fit {shlex.join([*fit_args, '--config', str(folder.overlay)])})",
        f"  trials     {folder.trials_csv}",
        *(f"  figure     {path}" for path in summary["figures"].values()),
        f"  summary    {folder.summary}",
        f"  storage    {summary['storage']}",
    ]
    if summary.get("wandb"):
        lines.append(f"  W&B        {summary['wandb']}")
    return lines


@dataclass(frozen=True)
class Request:
    """What a ``dapt tune`` command line asks for."""

    fit_args: list[str]
    seeds: list[int]
    space: SearchSpace
    folder: StudyFolder
    trials: int
    storage: str
    heartbeat: int


def parse_request(argv: list[str]) -> Request:
    """Read and check the command line (argparse's usage error, exit status 2, for a bad flag)."""
    parser = _parser()
    args, fit_args = parser.parse_known_args(argv)
    if args.trials < 1:
        parser.error(f"--trials must be >= 1, got {args.trials}")
    if args.heartbeat < 1:
        parser.error(f"--heartbeat must be >= 1 second, got {args.heartbeat}")
    seeds = _seeds(parser, args.seeds)
    _check_fit_args(parser, fit_args)
    configs = _configs(fit_args)
    if not configs:
        parser.error("give the dataset's config: dapt tune --config configs/<dataset>.yaml")
    folder = StudyFolder(Path(args.out), args.name or Path(configs[0]).stem)
    storage = args.storage or f"sqlite:///{folder.database.resolve()}"
    return Request(fit_args, seeds, load_space(args.space), folder, args.trials, storage, args.heartbeat)


def tune_main(argv: list[str]) -> int:
    """``dapt tune [--space FILE] [--trials N] [--seeds 1,2] [--storage URL] --config CONFIG [fit flags]``.

    Returns 0 (also when other workers still run trials: the last of them finishes), or 130 when interrupted.
    """
    request = parse_request(argv)
    ensure_writable_dir(request.folder.root, "--out")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours (trial_line)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # nothing a user can act on
        with FolderLock(request.folder.root / ".ask.lock"):  # workers started together create the tables once
            study = open_study(request.storage, request.folder.name, request.space, request.folder, request.heartbeat)
            check_seeds(study, request.seeds)
        try:
            counts = _search(study, request)
        except KeyboardInterrupt:
            print("[tune] interrupted: the running trial is recorded as failed; rerun the command to go on", flush=True)
            return 130
        return _finish(study, request, counts)


def _search(study: optuna.Study, request: Request) -> Counter[str]:
    folder, names = request.folder, [param.name for param in request.space.params]
    counts = count_states(study)
    print(
        f"[tune] study {folder.name!r} ({request.storage}): {counts['finished']}/{request.trials} trials finished; "
        f"searching {', '.join(names)} on the few-shot val/acc (seeds {','.join(map(str, request.seeds))}); "
        f"trials in {folder.root / 'trials'}",
        flush=True,
    )

    def on_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != optuna.trial.TrialState.FAIL:  # a failed trial printed its own line, with its error
            print(trial_line(trial, count_states(study), request.trials, names), flush=True)

    objective = Objective(request.space, request.fit_args, request.seeds, folder)
    with _sigterm_interrupts(), quiet_console():
        return search(study, folder, objective, request.trials, on_trial, CATCH)


def _finish(study: optuna.Study, request: Request, counts: Counter[str]) -> int:
    """Write the trials table and figures; once no trial runs, the overlay, the final runs and the summary."""
    folder, seeds, names = request.folder, request.seeds, [param.name for param in request.space.params]
    rows = trial_rows(study, folder, seeds, names)
    write_trials_csv(rows, folder.trials_csv)
    figures = write_figures(study, folder)
    if counts["running"]:
        print(
            f"[tune] {counts['finished']} trials finished, {counts['running']} still running in other workers: the "
            f"last one to finish trains and tests the best settings (or rerun this command then). Trials so far: "
            f"{folder.trials_csv}",
            flush=True,
        )
        return 0
    if not counts["complete"]:
        raise RuntimeError(
            f"study {folder.name!r} has no complete trial ({counts['pruned']} pruned, {counts['failed']} failed): "
            f"see {folder.trials_csv}; widen the space or relax the pruner ({request.space.path})"
        )
    best = study.best_trial
    settings = {name: best.params[name] for name in names if name in best.params}  # in the space file's order
    header = overlay_header(study, best, seeds, request.fit_args, folder.overlay)
    write_overlay(folder.overlay, settings, header)
    with quiet_console():
        finals, target = train_best(best, request.fit_args, seeds, folder)
    if len(finals) < len(seeds):
        print(f"[tune] the summary will be in {folder.summary} once the other worker's final run ends", flush=True)
        return 0
    summary = {
        "study": folder.name,
        "storage": request.storage,
        "trials": {key: counts[key] for key in ("finished", "complete", "pruned", "failed")},
        "best_trial": best.number,
        "settings": settings,
        "val_acc": best.value,
        "val_acc_per_seed": {str(seed): seed_value(best, seed) for seed in seeds},
        "final": finals,
        "final_val_acc": _mean([final["val_acc"] for final in finals]),
        "final_test_acc": _mean([final["test_acc"] for final in finals]),
        "overlay": str(folder.overlay),
        "trials_csv": str(folder.trials_csv),
        "figures": {name: str(path) for name, path in figures.items()},
    }
    if target is not None:
        summary["wandb"] = log_to_wandb(target, figures, rows, summary)
    write_summary(folder.summary, summary)
    print("\n".join(_summary_lines(summary, folder, request.fit_args)), flush=True)
    return 0
