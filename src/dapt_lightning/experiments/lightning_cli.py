"""``dapt fit/validate/test/predict``: a LightningCLI over DAPTModule and DAPTDataModule that runs experiments.

Beyond LightningCLI it links the class names from the data to the model, derives settings the official protocol
fixes (few-shot seed, epochs, the zero-shot template, the CLIP's image size), adds the prototype, logging and
checkpoint callbacks, and with ``--run.dir`` keeps the whole run in one folder ending with ``metrics.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dapt_lightning.callbacks.embeddings import EmbeddingPlots
from dapt_lightning.callbacks.evaluation import DispersionMonitor, PerClassAccuracy
from dapt_lightning.callbacks.prototypes import PrototypeCallback
from dapt_lightning.callbacks.run_info import LoggedSaveConfig, RunInfo, name_run
from dapt_lightning.checkpoint import SafeCheckpointIO, read_datamodule_settings
from dapt_lightning.data.datamodule import DAPTDataModule
from dapt_lightning.data.registry import dataset_template
from dapt_lightning.experiments.runs import (
    LAST_CHECKPOINT,
    METRICS_FILE,
    RunOptions,
    metric_values,
    run_record,
    write_metrics,
)
from dapt_lightning.methods import method_spec
from dapt_lightning.model.clip import clip_image_size
from dapt_lightning.module import DAPTModule
from dapt_lightning.schedule import official_max_epochs
from dapt_lightning.storage import ensure_writable_dir

TRAINER_SUBCOMMANDS = {
    "fit": "train prompts (then test them with --run.test_after_fit true)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint (or zero-shot CLIP) on the test split",
    "predict": "predict classes for the test split with a checkpoint",
}
"""LightningCLI's subcommands, as ``dapt --help`` describes them."""

DEFAULT_LOGGER = {"class_path": "dapt_lightning.loggers.DAPTWandbLogger"}
# The DataModule shards data itself (exact evaluation, DDP equal to one process): Lightning must not re-wrap it.
TRAINER_DEFAULTS = {"logger": DEFAULT_LOGGER, "use_distributed_sampler": False}
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
EVALUATION_SUBCOMMANDS = ("test", "validate", "predict")


class DAPTCLI(LightningCLI):
    """LightningCLI with linked class names, protocol defaults, the DAPT callbacks and run folders."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.classnames", "model.classnames", apply_on="instantiate")
        parser.add_lightning_class_args(PrototypeCallback, "prototypes")
        # A last.ckpt after every training epoch, whatever the validation interval, so a killed run resumes.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_on_train_epoch_end": True})
        parser.add_lightning_class_args(RunInfo, "run_info")
        parser.add_lightning_class_args(DispersionMonitor, "dispersion")
        parser.add_lightning_class_args(PerClassAccuracy, "per_class")
        parser.add_lightning_class_args(EmbeddingPlots, "embedding_plots")
        parser.add_class_arguments(RunOptions, "run", instantiate=False)

    def before_instantiate_classes(self) -> None:
        self._run_started = time.time()
        config = self.config[self.subcommand] if self.subcommand else self.config
        derive_protocol_settings(config)
        check_checkpoint_request(config, self.subcommand)
        if config.get("run") is not None and config.run.get("dir"):
            point_outputs_at(config, Path(config.run.dir))
        if config.trainer.default_root_dir:
            ensure_writable_dir(config.trainer.default_root_dir, "--trainer.default_root_dir")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        # Atomic saves and weights_only loads, unless the user configured their own checkpoint I/O.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer

    def _name_run(self, stage: str) -> None:
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
        if not self.trainer.is_global_zero:
            return
        config = self.config[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        if kind == "fit":
            trained_on: dict[str, Any] | None = dict(self.datamodule.hparams)
        elif ckpt_path and Path(ckpt_path).is_file():
            trained_on = read_datamodule_settings(ckpt_path)
        else:
            trained_on = None
        record = run_record(
            kind,
            self.model,
            self.datamodule,
            label=config.run.get("label"),
            trained_on=trained_on,
            ckpt_path=ckpt_path,
            test_metrics=metric_values(self.trainer.callback_metrics, ("test/",)),
            fit_metrics=fit_metrics,
            epochs=self.trainer.current_epoch,
            elapsed_s=time.time() - self._run_started,
            settings=self._parser(self.subcommand).dump(config, skip_none=False),
        )
        write_metrics(Path(config.run.dir) / METRICS_FILE, record)


def derive_protocol_settings(config: Any) -> None:
    """Fill in what the official protocol derives: few-shot seed, epochs, zero-shot template, image size."""
    seed = config.get("seed_everything")
    if config.data.seed is None and isinstance(seed, int) and not isinstance(seed, bool):
        config.data.seed = seed
    if config.trainer.max_epochs is None:
        config.trainer.max_epochs = official_max_epochs(config.data.dataset, config.data.num_shots)
    if config.model.get("template") is None and config.model.method == "zeroshot":
        config.model.template = dataset_template(config.data.dataset)
    if config.data.get("image_size") is None:
        # The CLIP's input size, from its architecture's config: the data follows the model.
        config.data.image_size = clip_image_size(config.model.clip_name)


def check_checkpoint_request(config: Any, subcommand: str | None) -> None:
    """Refuse a missing ``--ckpt_path``, and evaluating untrained prompts."""
    ckpt_path = config.get("ckpt_path")
    if ckpt_path and ckpt_path not in SPECIAL_CKPT_PATHS and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path: checkpoint {ckpt_path} does not exist; check the path")
    spec = method_spec(config.model.method)
    if subcommand in EVALUATION_SUBCOMMANDS and not ckpt_path and (spec.text_prompts or spec.visual_prompts):
        raise ValueError(
            f"`dapt {subcommand}` with --model.method {config.model.method} needs --ckpt_path (a trained "
            "checkpoint): untrained prompts are random. Use --model.method zeroshot for zero-shot CLIP."
        )


def point_outputs_at(config: Any, run_dir: Path) -> None:
    """Send the trainer's files, the logger's and the last checkpoint into ``run_dir``."""
    config.trainer.default_root_dir = str(run_dir)
    logger = config.trainer.get("logger")
    if logger not in (None, False, True) and "save_dir" in (logger.get("init_args") or {}):
        logger.init_args.save_dir = str(run_dir)
    if config.get("checkpoint") is not None:
        # The CLI's ModelCheckpoint (save_last every epoch) writes into the run folder, where sweeps resume from.
        config.checkpoint.dirpath = str(run_dir / LAST_CHECKPOINT.parent)


def cli_main(args: list[str] | None = None, run: bool = True, **kwargs: Any) -> DAPTCLI:
    """Build (and by default run) the LightningCLI; tests call this with an argument list."""
    return DAPTCLI(
        DAPTModule,
        DAPTDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=LoggedSaveConfig,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        **kwargs,
    )


def trainer_main(argv: list[str]) -> int:
    """Run ``dapt fit|validate|test|predict ARGV``; return the exit status."""
    cli_main(argv)
    return 0
