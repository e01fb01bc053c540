"""One ``dapt fit`` inside ``dapt tune``: a trial's seed (no test split at all, validation reported to the trial),
or the best settings' final run (fitted, then tested).

Both validate the last epoch's model, whatever ``--trainer.check_val_every_n_epoch`` says: that model is the one
the protocol keeps, so its validation accuracy is the trial's value (and what the final run must reproduce).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import optuna

from dapt_lightning.experiments.run import RunRecord, RunSpec, execute
from dapt_lightning.experiments.tune.space import STEPS_PER_SEED

MONITOR = "val/acc"


class ValidateLastEpoch(L.Callback):
    """Validates the last training epoch and keeps the last ``val/acc`` seen while fitting.

    Attributes:
        value: the last validation accuracy (None before any). epoch: the epoch it was measured after.
    """

    def __init__(self) -> None:
        self.value: float | None = None
        self.epoch: int | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1:
            # Lightning reads this attribute at the end of every epoch: the last one is then validated.
            trainer.check_val_every_n_epoch = 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or MONITOR not in trainer.callback_metrics:
            return
        self.value = float(trainer.callback_metrics[MONITOR])
        self.epoch = trainer.current_epoch
        self.on_measured(trainer)

    def on_measured(self, trainer: L.Trainer) -> None:
        """What to do with a new measurement (nothing here)."""


class ReportToTrial(ValidateLastEpoch):
    """Reports every validation accuracy to an Optuna trial and stops fitting when the pruner says so.

    Args:
        trial: the running trial.
        seed_index: which of the trial's seeds this fit is (its steps follow the earlier seeds' steps).
    """

    def __init__(self, trial: optuna.Trial, seed_index: int) -> None:
        super().__init__()
        self.trial = trial
        self.seed_index = seed_index
        self.pruned = False

    def on_measured(self, trainer: L.Trainer) -> None:
        progress = round(STEPS_PER_SEED * (trainer.current_epoch + 1) / max(1, trainer.max_epochs or 1))
        self.trial.report(self.value, self.seed_index * STEPS_PER_SEED + progress)
        if self.trial.should_prune():
            # Stopping (rather than raising inside Lightning's hook) ends the fit cleanly, checkpoint and all;
            # the objective then raises TrialPruned.
            self.pruned = True
            trainer.should_stop = True


def fit(spec: RunSpec, monitor: ValidateLastEpoch) -> tuple[RunRecord, float | None]:
    """Run the fit ``spec`` in this process with ``monitor`` validating its last epoch; returns what it left and
    the last epoch's val/acc."""
    return execute(spec, callbacks=(monitor,)), monitor.value


def fit_spec(
    args: list[str],
    settings: dict[str, Any],
    run_dir: Path,
    seed: int,
    *,
    trial: bool,
    name: str,
    group: str,
    configs: tuple[Path, ...] = (),
) -> RunSpec:
    """One fit of ``dapt tune``: the user's flags ``args``, then ``configs`` (the best settings' overlay), then
    ``settings`` (a trial's), in its folder with its seed; its W&B run is ``name`` in ``group``.

    A trial holds no test split (nothing in it can read a test image), is not tested and draws no t-SNE figures
    (they cost time and say nothing about the settings searched); the final run is tested after fitting.
    """
    run = {
        "seed_everything": seed,
        "trainer.devices": 1,  # one trial, one process: Lightning would relaunch `dapt tune` itself per device
        "run.dir": str(run_dir),
        "run.overwrite": True,
        "run.test_after_fit": not trial,
        "run.name": name,
        "run.group": group,
    }
    if trial:
        run |= {"data.hold_out_test": True, "embedding_plots.enabled": False}
    return RunSpec("fit", args=tuple(args), configs=configs, settings={**settings, **run})
