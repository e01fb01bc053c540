"""One ``dapt fit`` inside ``dapt tune``: a trial's seed (no test split at all, validation reported to the trial),
or the best settings' final run (fitted, then tested).

Both validate the last epoch's model, whatever ``--trainer.check_val_every_n_epoch`` says: that model is the one
the protocol keeps, so its validation accuracy is the trial's value (and what the final run must reproduce).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

import lightning as L
import optuna

from dapt_lightning.experiments.lightning_cli import DAPTCLI, cli_main
from dapt_lightning.experiments.tune.space import STEPS_PER_SEED
from dapt_lightning.loggers import finish_wandb_runs

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


class TuneCLI(DAPTCLI):
    """``dapt fit`` with a validation callback, and for a trial no test split at all.

    Args:
        monitor: the callback that validates the last epoch (and reports to the trial).
        hide_test: drop the test split from the DataModule: nothing in the run can read a test image.
        run_name: the W&B run's name (``tune-<study>-trial<k>-seed<s>``); the group is ``tune-<study>``.
    """

    def __init__(self, monitor: ValidateLastEpoch, hide_test: bool, run_name: str, group: str, **kwargs: Any):
        self.monitor, self.hide_test, self.run_name, self.group = monitor, hide_test, run_name, group
        super().__init__(**kwargs)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self.trainer.world_size > 1:
            # Lightning would relaunch `dapt tune` itself once per extra process, each running its own search.
            raise ValueError(
                f"dapt tune fits each trial in one process, got {self.trainer.world_size} (--trainer.devices, "
                "--trainer.num_nodes): set --trainer.devices 1 and start one worker per GPU (README, dapt tune)"
            )
        self.trainer.callbacks.append(self.monitor)
        if self.hide_test:
            # Trials are scored on the few-shot validation split only: without test items, no dataloader,
            # callback (t-SNE, per-class accuracy) or bug can read a test image.
            self.datamodule.splits = dataclasses.replace(self.datamodule.splits, test=[])

    def before_fit(self) -> None:
        for logger in self.trainer.loggers:
            if hasattr(logger, "set_run_identity"):  # before DAPTCLI names it: the first name given wins
                logger.set_run_identity(self.run_name, self.group, ["dapt-tune"])
        super().before_fit()


def fit(
    args: list[str], monitor: ValidateLastEpoch, hide_test: bool, run_name: str, group: str
) -> tuple[DAPTCLI, float | None]:
    """Run ``dapt fit ARGS`` in this process, as ``lightning_cli.cli_main`` builds it; returns the CLI
    (its W&B runs still open: the caller ends them with :func:`close`) and the last epoch's val/acc."""
    cli = cli_main(["fit", *args], cli_class=functools.partial(TuneCLI, monitor, hide_test, run_name, group))
    return cli, monitor.value


def close(cli: DAPTCLI | None) -> None:
    """End the W&B runs of a fit (in-process runs would otherwise share one)."""
    finish_wandb_runs(getattr(cli, "trainer", None))
    wandb = sys.modules.get("wandb")
    if cli is None and wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1)  # a run that failed before its trainer existed would be reused by the next


def run_args(run_dir: Path, seed: int, trial: bool) -> list[str]:
    """The flags of one fit of ``dapt tune``: its folder and seed; a trial is not tested and draws no t-SNE figures
    (they cost time and say nothing about the settings searched), the final run is tested after fitting."""
    args = ["--seed_everything", str(seed), "--run.dir", str(run_dir), "--run.overwrite", "true"]
    args += ["--run.test_after_fit", "false" if trial else "true"]
    return [*args, "--embedding_plots.enabled", "false"] if trial else args
