"""``dapt tune --config configs/<dataset>.yaml``: the search (``request.py`` reads the command line), one line per
trial, and at the end the overlay, the final runs (``final.py``) and the summary."""

from __future__ import annotations

import warnings
from collections import Counter

import optuna
from optuna.trial import FrozenTrial

from dapt_lightning.experiments.console import quiet_console
from dapt_lightning.experiments.run import interruptible
from dapt_lightning.experiments.tune.final import format_value, mean_of, summary_lines, train_best
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
from dapt_lightning.experiments.tune.request import Request, parse_request
from dapt_lightning.experiments.tune.study import (
    STATE_NAMES,
    FolderLock,
    count_states,
    open_study,
    search,
)
from dapt_lightning.storage import ensure_writable_dir

CATCH = (FloatingPointError,)
"""Errors that fail one trial and let the search go on: settings that diverge (a NaN loss) are a result."""


def trial_line(trial: FrozenTrial, counts: Counter[str], target: int, names: list[str]) -> str:
    """The one line printed per trial: number, state, value, the settings ``names``, time, progress."""
    value = trial.value
    if value is None and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    shown = "val/acc -     " if value is None else f"val/acc {value:.4f}"
    settings = "  ".join(f"{name} {format_value(trial.params[name])}" for name in names if name in trial.params)
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
    with interruptible(), quiet_console():
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
    # The trials' seed, whatever the base config says (without one, a fit with the overlay would run with seed 0).
    write_overlay(folder.overlay, {"seed_everything": seeds[0], **settings}, header)
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
        "final_val_acc": mean_of([final["val_acc"] for final in finals]),
        "final_test_acc": mean_of([final["test_acc"] for final in finals]),
        "overlay": str(folder.overlay),
        "trials_csv": str(folder.trials_csv),
        "figures": {name: str(path) for name, path in figures.items()},
    }
    if target is not None:
        summary["wandb"] = log_to_wandb(target, figures, rows, summary)
    write_summary(folder.summary, summary)
    print("\n".join(summary_lines(summary, folder, request.fit_args)), flush=True)
    return 0
