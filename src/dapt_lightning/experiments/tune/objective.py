"""One trial of ``dapt tune``: its settings fitted once per seed, scored by the last epoch's few-shot validation
accuracy (the mean over seeds); the test split is never read."""

from __future__ import annotations

import json
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from dapt_lightning.experiments.claims import claim_record
from dapt_lightning.experiments.run import RunInterrupted, failure_line
from dapt_lightning.experiments.tune.fit import ReportToTrial, fit, fit_spec
from dapt_lightning.experiments.tune.space import SearchSpace
from dapt_lightning.experiments.tune.study import WORKER_ATTR, StudyFolder, set_aside

SEED_ATTR = "val_acc_seed{seed}"
"""The trial user attribute holding one seed's validation accuracy."""


def seed_value(trial: optuna.trial.FrozenTrial, seed: int) -> float | None:
    """One seed's validation accuracy in a trial (None when that seed did not run)."""
    return trial.user_attrs.get(SEED_ATTR.format(seed=seed))


@dataclass
class Objective:
    """Fits a trial's settings for each seed and returns the mean validation accuracy.

    Args:
        space: what to search.
        fit_args: the ``dapt fit`` flags every fit gets (the dataset's config and the user's own flags).
        seeds: one fit per seed; a trial's value is the mean of their accuracies.
        folder: the study folder (each trial's runs go to ``trials/<k>/seed<s>/``).
    """

    space: SearchSpace
    fit_args: list[str]
    seeds: list[int]
    folder: StudyFolder

    def __call__(self, trial: optuna.Trial, started: Callable[[], None] = lambda: None) -> float:
        """Run ``trial``; ``started`` is called once the trial exists (the search's lock is released then).

        Raises:
            optuna.TrialPruned: the pruner stopped a seed's fit (the trial ends there).
            KeyboardInterrupt: the worker was interrupted (Ctrl-C, SIGTERM: ``run.RunInterrupted``): Optuna marks
                the trial failed.
        """
        started()
        trial.set_user_attr(WORKER_ATTR, claim_record())
        settings = self.space.suggest(trial)
        values = []
        try:
            for index, seed in enumerate(self.seeds):
                value, pruned = self._fit(trial, settings, index, seed)
                values.append(value)
                trial.set_user_attr(SEED_ATTR.format(seed=seed), value)
                if pruned:
                    raise optuna.TrialPruned(f"val/acc {value:.4f} below the pruner's bar during seed {seed}")
        except optuna.TrialPruned:
            raise
        except (Exception, KeyboardInterrupt, SystemExit, RunInterrupted) as error:
            summary = failure_line(error)
            if not isinstance(error, Exception):
                summary = f"interrupted ({type(error).__name__}: {error}); rerun the command to go on with the study"
            details = f"settings: {json.dumps(settings)}\n\n" + "".join(traceback.format_exception(error))
            path = set_aside(self.folder, trial.number, summary, details)
            print(f"[tune] trial {trial.number} failed: {summary}\n  kept in {path}", flush=True)
            if not isinstance(error, Exception | KeyboardInterrupt):
                # Optuna records a KeyboardInterrupt as a failed trial, but would leave the trial running on any
                # other BaseException (an interrupt, Lightning's exit).
                raise KeyboardInterrupt(summary) from error
            raise
        return statistics.fmean(values)

    def _fit(self, trial: optuna.Trial, settings: dict[str, Any], index: int, seed: int) -> tuple[float, bool]:
        run_dir = self.folder.trial_dir(trial.number) / f"seed{seed}"
        reporter = ReportToTrial(trial, index)
        name = f"tune-{self.folder.name}-trial{trial.number}-seed{seed}"
        spec = fit_spec(self.fit_args, settings, run_dir, seed, trial=True, name=name, group=f"tune-{self.folder.name}")
        started = time.time()
        _, value = fit(spec, reporter)
        if value is None:
            raise RuntimeError(
                f"trial {trial.number}, seed {seed}: no val/acc was logged ({run_dir}); the few-shot validation split "
                "is empty? `dapt data check` shows the dataset's splits"
            )
        trial.set_user_attr(f"seconds_seed{seed}", round(time.time() - started, 1))
        return value, reporter.pruned
