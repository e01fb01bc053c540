"""One experiment run on disk: its folder, its last checkpoint, and the ``metrics.json`` that marks it finished.

``dapt fit/test --run.dir DIR`` puts everything of a run under DIR (W&B files, ``checkpoints/last.ckpt``, figures,
per-class accuracy) and writes ``DIR/metrics.json`` atomically when the run's evaluation is done. ``dapt sweep``
builds on this: a run whose ``metrics.json`` exists is finished; one with only ``last.ckpt`` resumes from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapt_lightning.cache import atomic_write_bytes

METRICS_FILE = "metrics.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
METRICS_FORMAT = 1


@dataclass
class RunOptions:
    """Where a run's outputs go and what it evaluates (``--run.*``)."""

    dir: str | None = None
    """Run folder: W&B files, ``checkpoints/last.ckpt`` (saved every epoch), figures and ``metrics.json``."""
    test_after_fit: bool = False
    """After ``dapt fit``, evaluate the last epoch's model on the test set (the official protocol)."""
    label: str | None = None
    """Name of the method in result tables (a sweep's variant name, e.g. ``dapt_no_inter``); None: the method."""


def last_checkpoint(run_dir: str | Path) -> Path:
    """Where a run folder keeps its resumable checkpoint."""
    return Path(run_dir) / LAST_CHECKPOINT


def _number(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    return value


def metric_values(metrics: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The logged scalars whose names start with one of ``prefixes``, as plain Python numbers."""
    return {k: _number(v) for k, v in sorted(metrics.items()) if k.startswith(prefixes) and "/" in k}


def write_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON atomically (floats at full precision: ``json`` writes their shortest exact repr)."""
    record = {"format": METRICS_FORMAT, **record}
    atomic_write_bytes(Path(path), (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A run's ``metrics.json``."""
    with open(path) as handle:
        return json.load(handle)


SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
EVALUATION_SUBCOMMANDS = ("test", "validate", "predict")


class RunCLIMixin:
    """The experiment-workflow parts of the ``dapt`` CLI (mixed into DAPTCLI, before LightningCLI).

    Adds the logging callbacks and ``--run.*``; resolves the zero-shot template from the dataset; checks
    ``--ckpt_path``; with ``--run.dir`` points the trainer, logger and a last-checkpoint callback at the run
    folder, tests after fitting (``--run.test_after_fit``) and writes ``metrics.json``.
    """

    def add_run_arguments(self, parser: Any) -> None:
        from dapt_lightning.callbacks.embeddings import EmbeddingPlots
        from dapt_lightning.callbacks.evaluation import DispersionMonitor, PerClassAccuracy
        from dapt_lightning.callbacks.run_info import RunInfo

        parser.add_lightning_class_args(RunInfo, "run_info")
        parser.add_lightning_class_args(DispersionMonitor, "dispersion")
        parser.add_lightning_class_args(PerClassAccuracy, "per_class")
        parser.add_lightning_class_args(EmbeddingPlots, "embedding_plots")
        parser.add_class_arguments(RunOptions, "run", instantiate=False)

    def prepare_run(self, config: Any, subcommand: str | None) -> None:
        """Resolve run-level defaults in the parsed ``config`` before anything is instantiated."""
        import time

        from dapt_lightning.methods import method_spec
        from dapt_lightning.templates import dataset_template

        self._run_started = time.time()
        if config.model.get("template") is None and config.model.method == "zeroshot":
            config.model.template = dataset_template(config.data.dataset)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path not in SPECIAL_CKPT_PATHS and not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"--ckpt_path: checkpoint {ckpt_path} does not exist; check the path")
        spec = method_spec(config.model.method)
        if subcommand in EVALUATION_SUBCOMMANDS and not ckpt_path and (spec.text_prompts or spec.visual_prompts):
            raise ValueError(
                f"`dapt {subcommand}` with --model.method {config.model.method} needs --ckpt_path (a trained "
                "checkpoint): untrained prompts are random. Use --model.method zeroshot for zero-shot CLIP."
            )
        run = config.get("run")
        if run is None or not run.get("dir"):
            return
        run_dir = Path(run.dir)
        config.trainer.default_root_dir = str(run_dir)
        logger = config.trainer.get("logger")
        if logger not in (None, False, True) and "save_dir" in (logger.get("init_args") or {}):
            logger.init_args.save_dir = str(run_dir)
        if config.get("checkpoint") is not None:
            # The CLI's ModelCheckpoint (save_last every epoch) writes into the run folder, where sweeps resume from.
            config.checkpoint.dirpath = str(run_dir / LAST_CHECKPOINT.parent)

    def _name_run(self, stage: str) -> None:
        from dapt_lightning.callbacks.run_info import name_run

        # Before trainer.fit/test: Lightning starts the W&B run before any callback's setup could name it.
        run_info = self.config[self.subcommand].get("run_info")
        if run_info is None or run_info.get("name_runs", True):
            name_run(self.trainer, self.model, self.datamodule, stage)

    def before_fit(self) -> None:
        self._name_run("fit")

    def before_test(self) -> None:
        self._name_run("test")

    def before_validate(self) -> None:
        self._name_run("validate")

    def after_fit(self) -> None:
        options = self.config[self.subcommand].get("run")
        if options is None:
            return
        fit_metrics = metric_values(self.trainer.callback_metrics, ("val/", "train/"))
        if options.test_after_fit:
            # The last epoch's model, as the official protocol (no best-validation selection).
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=None)
        if options.dir:
            self._write_run_metrics("fit", fit_metrics)

    def after_test(self) -> None:
        options = self.config[self.subcommand].get("run")
        if options is not None and options.dir:
            self._write_run_metrics("test", {})

    def _write_run_metrics(self, kind: str, fit_metrics: dict[str, Any]) -> None:
        import time

        import torch
        import yaml

        if not self.trainer.is_global_zero:
            return
        config = self.config[self.subcommand]
        datamodule = self.datamodule
        ckpt_path = config.get("ckpt_path")
        trained_on: dict[str, Any] | None = None
        if kind == "fit":
            trained_on = dict(datamodule.hparams)
        elif ckpt_path and Path(ckpt_path).is_file():
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            trained_on = dict(checkpoint.get("datamodule_hyper_parameters") or {})
        module = self.model
        record = {
            "kind": kind,
            "dataset": datamodule.dataset_name,
            "method": module.hparams.method,
            "label": config.run.get("label") or module.hparams.method,
            "shots": datamodule.num_shots,
            "seed": datamodule.seed,
            "subsample": datamodule.hparams.subsample,
            "num_classes": len(datamodule.classnames),
            "trained_on": None
            if trained_on is None
            else {k: trained_on.get(k) for k in ("dataset", "num_shots", "seed", "subsample")},
            "ckpt_path": str(ckpt_path) if kind == "test" and ckpt_path else None,
            "test": metric_values(self.trainer.callback_metrics, ("test/",)),
            "fit": fit_metrics,
            "epochs": self.trainer.current_epoch,
            "elapsed_s": time.time() - getattr(self, "_run_started", time.time()),
            "clip": module.clip_identity.to_dict(),
            "settings": yaml.safe_load(self._parser(self.subcommand).dump(config, skip_none=False)),
        }
        write_metrics(Path(config.run.dir) / METRICS_FILE, record)
