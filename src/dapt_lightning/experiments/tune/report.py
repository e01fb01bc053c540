"""What ``dapt tune`` leaves to act on: the best settings as a config overlay, the trials as CSV, the optimisation
history and parameter importances as PNG (and in W&B), and a summary of the best trial's validation accuracy next
to the final run's test accuracy."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from dapt_lightning.experiments.run_spec import nested
from dapt_lightning.experiments.tune.objective import seed_value
from dapt_lightning.experiments.tune.study import STATE_NAMES, WORKER_ATTR, StudyFolder
from dapt_lightning.storage import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def trial_rows(study: optuna.Study, folder: StudyFolder, seeds: list[int], names: list[str]) -> list[dict[str, Any]]:
    """One row per trial: number, state, value (mean val/acc), each seed's val/acc, the settings ``names``, time,
    worker, folder, and why a failed trial failed."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        failed = folder.failed_dir(trial.number)
        error = failed / "error.txt"
        worker = trial.user_attrs.get(WORKER_ATTR) or {}
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        row = {
            "trial": trial.number,
            "state": STATE_NAMES.get(trial.state, trial.state.name.lower()),
            "val_acc": trial.value,
            **{f"val_acc_seed{seed}": seed_value(trial, seed) for seed in seeds},
            **{name: trial.params.get(name) for name in names},
            "seconds": None if duration is None else round(duration, 1),
            "worker": f"{worker.get('host')}:{worker.get('pid')}" if worker else "",
            "folder": str(failed if failed.exists() else folder.trial_dir(trial.number)),
            "error": error.read_text().split("\n", 1)[0] if error.is_file() else "",
        }
        rows.append(row)
    return rows


def write_trials_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """The trials table as CSV (full precision), written atomically."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def write_overlay(path: Path, settings: dict[str, Any], header: list[str]) -> Path:
    """The best settings as a config to add after the dataset's (``--config base.yaml --config PATH``)."""
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(nested(settings), sort_keys=False)
    atomic_write_bytes(path, text.encode())
    return path


def overlay_header(study: optuna.Study, best: FrozenTrial, seeds: list[int], fit_args: list[str], path: Path) -> list:
    """Where the overlay's settings come from and how to use them."""
    finished = sum(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in study.trials)
    return [
        f"Written by `dapt tune`: the best of {finished} trials of study {study.study_name!r}, trial {best.number}.",
        f"Few-shot validation accuracy {best.value:.4f} (mean over seeds {', '.join(map(str, seeds))}); "
        "the final run's test accuracy is in the study's summary.json.",
        f"Searched with: dapt tune {shlex.join(fit_args)}",
        f"Use: dapt fit {shlex.join([*fit_args, '--config', str(path)])}",
        f"seed_everything is the trials' first seed; the others: add --seed_everything N for N in {seeds[1:]}"
        if len(seeds) > 1
        else "seed_everything is the seed the trials used: the fit reproduces the best trial's validation accuracy",
    ]


def draw_history(study: optuna.Study) -> Figure | None:
    """Validation accuracy per trial (pruned trials at their last report) and the best so far; None: no trial
    has a value yet."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if not complete and not pruned:
        return None
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    ax.scatter([t.number for t in complete], [t.value for t in complete], s=18, label="complete", zorder=3)
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, s=18, marker="x", color="grey", label="pruned (last report)")
    best, xs, ys = -math.inf, [], []
    for trial in sorted(complete, key=lambda t: t.number):
        best = max(best, trial.value)
        xs.append(trial.number)
        ys.append(best)
    if xs:
        last = max(t.number for t in study.trials)
        ax.step([*xs, last], [*ys, ys[-1]], where="post", color="tab:red", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("val/acc (few-shot val split)")
    ax.set_title(f"dapt tune {study.study_name}: optimisation history", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def param_importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances of the settings for val/acc (seeded, so a report is reproducible), or None and why not:
    too few complete trials to tell (fewer than two), or no setting varies."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        return None, f"{len(complete)} complete trial(s); fANOVA needs 2 or more"
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return optuna.importance.get_param_importances(study, evaluator=evaluator), ""
    except (RuntimeError, ValueError) as error:
        return None, f"fANOVA could not tell ({' '.join(str(error).split())})"


def draw_importances(importances: dict[str, float], name: str) -> Figure:
    """A bar per setting: its share of the variance of val/acc (fANOVA)."""
    from matplotlib.figure import Figure

    names = list(importances)[::-1]  # the most important on top
    fig = Figure(figsize=(6.4, 0.6 + 0.5 * len(names)))
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    for index, value in enumerate(importances[n] for n in names):
        ax.text(value, index, f" {value:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("importance for val/acc (fANOVA)")
    ax.set_title(f"dapt tune {name}: parameter importances", fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as a PNG atomically (a worker reading it never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fig.savefig(tmp, dpi=120, format="png")
    os.replace(tmp, path)
    return path


def write_figures(study: optuna.Study, folder: StudyFolder) -> dict[str, Path]:
    """The optimisation history and the parameter importances as PNG, when there is enough to draw."""
    written = {}
    history = draw_history(study)
    if history is not None:
        written["optimization_history"] = save_figure(history, folder.figures / "optimization_history.png")
    importances, why_not = param_importances(study)
    if importances:
        figure = draw_importances(importances, study.study_name)
        written["param_importances"] = save_figure(figure, folder.figures / "param_importances.png")
    else:
        print(f"[tune] no param_importances.png: {why_not}", flush=True)
    return written


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    """The study's outcome as JSON: the best trial, its settings and val/acc, the final runs' val and test."""
    atomic_write_bytes(path, (json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n").encode())
    return path


def log_to_wandb(target: dict[str, Any], figures: dict[str, Path], rows: list[dict[str, Any]], summary: dict) -> str:
    """One W&B run (``tune-<study>``, in the project and mode the final run used) with the figures, the trials
    table and the summary; returns where it went (the offline folder, or the run's URL)."""
    import wandb

    run = wandb.init(**target, job_type="tune")
    try:
        media: dict[str, Any] = {f"tune/{name}": wandb.Image(str(path)) for name, path in figures.items()}
        if rows:
            columns = list(rows[0])
            media["tune/trials"] = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
        run.log(media)
        for key, value in summary.items():
            if isinstance(value, int | float | str):
                run.summary[key] = value
        return str(Path(run.dir).parent) if run.settings.mode == "offline" else str(run.url)
    finally:
        run.finish()
