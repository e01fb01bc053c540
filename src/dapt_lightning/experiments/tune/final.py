"""The end of a study: the best settings trained again once per seed with the overlay and tested, and the lines
that summarise the study."""

from __future__ import annotations

import shlex
import statistics
from typing import Any

from optuna.trial import FrozenTrial

from dapt_lightning.callbacks.run_files import METRICS_FILE, read_metrics
from dapt_lightning.experiments.claims import claimed
from dapt_lightning.experiments.tune.fit import ValidateLastEpoch, fit, fit_spec
from dapt_lightning.experiments.tune.objective import seed_value
from dapt_lightning.experiments.tune.study import StudyFolder
from dapt_lightning.loggers import DAPTWandbLogger


def format_value(value: Any) -> str:
    """A setting's value as the trial lines and the summary print it."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _wandb_target(trainer: Any, folder: StudyFolder) -> dict[str, Any] | None:
    """Where the study's W&B run goes: the project and mode of the final run's W&B logger (None: no W&B)."""
    for logger in getattr(trainer, "loggers", None) or []:
        if isinstance(logger, DAPTWandbLogger) and logger.mode != "disabled":
            group = f"tune-{folder.name}"
            # Absolute: W&B's service process resolves a relative folder against its own working directory.
            where = str(folder.root.resolve())
            return {"project": logger.project, "mode": logger.mode, "dir": where, "name": group, "group": group}
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
                name, group = f"tune-{folder.name}-best-seed{seed}", f"tune-{folder.name}"
                spec = fit_spec(
                    fit_args, {}, run_dir, seed, trial=False, name=name, group=group, configs=(folder.overlay,)
                )
                record, _ = fit(spec, ValidateLastEpoch())
                target = target or _wandb_target(record.trainer, folder)
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


def mean_of(values: list[Any]) -> float | None:
    numbers = [v for v in values if v is not None]
    return statistics.fmean(numbers) if numbers else None


def summary_lines(summary: dict[str, Any], folder: StudyFolder, fit_args: list[str]) -> list[str]:
    settings = "  ".join(f"{name} {format_value(value)}" for name, value in summary["settings"].items())
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
