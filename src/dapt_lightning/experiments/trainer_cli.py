"""``dapt fit/validate/test/predict``: a LightningCLI over the method classes (``--model NAME``, or YAML's
``model: {class_path, init_args}``) and :class:`FewShotDataModule`.

Beyond LightningCLI it settles what the official protocol derives (``checks.py``), adds the evaluation callbacks,
and keeps every run in a folder of its own (``runs.py``) with its log, ``metrics.json`` and closing summary
(``callbacks/run_files.py``). It parses a command line or a :class:`RunSpec`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dapt_lightning.arguments import UsageError
from dapt_lightning.callbacks.embeddings import EmbeddingPlots
from dapt_lightning.callbacks.evaluation import DispersionMonitor, PerClassAccuracy
from dapt_lightning.callbacks.predictions import PredictionWriter
from dapt_lightning.callbacks.prototypes import PrototypeCallback
from dapt_lightning.callbacks.run_files import METRICS_FILE, RUN_LOG, ClosingSummary, MetricsFile, RunLog
from dapt_lightning.callbacks.run_info import LoggedSaveConfig, RunInfo, name_run
from dapt_lightning.checkpoint import SafeCheckpointIO
from dapt_lightning.data.datamodule import FewShotDataModule
from dapt_lightning.experiments.checks import (
    EVALUATION_SUBCOMMANDS,
    check_checkpoint_request,
    check_clip_serves_method,
    check_dataset_given,
    check_devices_and_precision,
    check_same_model,
    derive_protocol_settings,
)
from dapt_lightning.experiments.claims import claimed, describe, holder_of
from dapt_lightning.experiments.cli_errors import error_line
from dapt_lightning.experiments.recorded import TrainedRun, explicit_settings, restore
from dapt_lightning.experiments.run_spec import RunSpec, parse_spec
from dapt_lightning.experiments.runs import (
    RunFolderError,
    RunOptions,
    check_run_folder,
    default_run_folder,
    is_first_process,
    last_checkpoint,
    point_outputs_at,
)
from dapt_lightning.loggers import finish_wandb_runs
from dapt_lightning.methods import CLIPMethod, registered_methods
from dapt_lightning.methods.registry import init_arguments
from dapt_lightning.storage import DiskFullError, disk_full_message, ensure_writable_dir, is_disk_full

TRAINER_SUBCOMMANDS = {
    "fit": "train a method (then test it with --run.test_after_fit true)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint (or zero-shot CLIP) on the test split",
    "predict": "classify images with a checkpoint: the test split, or your own (--data.images 'photos/**/*.jpg')",
}
"""LightningCLI's subcommands, as ``dapt --help`` describes them."""

DEFAULT_METHOD = "dapt_lightning.methods.DAPT"
DEFAULT_LOGGER = {"class_path": "dapt_lightning.loggers.DAPTWandbLogger"}
# The DataModule shards data itself (exact evaluation, DDP equal to one process): Lightning must not re-wrap it.
TRAINER_DEFAULTS = {"logger": DEFAULT_LOGGER, "use_distributed_sampler": False}


class DAPTCLI(LightningCLI):
    """LightningCLI with the method classes, protocol defaults, the evaluation callbacks and run folders.

    Args:
        args: a command line (``["fit", "--config", ...]``) or a :class:`RunSpec`.
        callbacks: more callbacks for this run's Trainer (``dapt tune``'s validation reporter).
        **kwargs: LightningCLI's (``run=False`` builds without running).
    """

    def __init__(self, args: list[str] | RunSpec | None = None, callbacks: tuple[L.Callback, ...] = (), **kwargs: Any):
        self.run_log: RunLog | None = None
        self.run_dir: Path | None = None
        self._claim: Any = None
        self.extra_callbacks = list(callbacks)
        try:
            super().__init__(
                model_class=CLIPMethod,
                subclass_mode_model=True,
                datamodule_class=FewShotDataModule,
                trainer_defaults=TRAINER_DEFAULTS,
                # The first of the official seeds, as the few-shot sampling's default (not Lightning's random seed).
                seed_everything_default=1,
                save_config_callback=LoggedSaveConfig,
                save_config_kwargs={"overwrite": True},
                args=args,
                **kwargs,
            )
        except BaseException as error:
            self.close()
            if is_disk_full(error) and not isinstance(error, DiskFullError) and self.run_dir is not None:
                raise DiskFullError(disk_full_message(self.run_dir, getattr(error, "filename", None))) from error
            raise

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        # A bad setting raises (one line, see parse_arguments) instead of printing the whole usage and exiting.
        parser.exit_on_error = False
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": DEFAULT_METHOD}})
        parser.add_lightning_class_args(PrototypeCallback, "prototypes")
        # One checkpoint file per run, written after every training epoch whatever the validation interval, so a
        # killed run resumes: the latest is kept, named last.ckpt (what --ckpt_path last finds). More files (best by
        # a metric, every epoch) when --checkpoint.* asks for them.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.filename": "last",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": False,
                "checkpoint.save_on_train_epoch_end": True,
            }
        )
        parser.add_lightning_class_args(RunInfo, "run_info")
        parser.add_lightning_class_args(DispersionMonitor, "dispersion")
        parser.add_lightning_class_args(PerClassAccuracy, "per_class")
        parser.add_lightning_class_args(EmbeddingPlots, "embedding_plots")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_class_arguments(RunOptions, "run", instantiate=False)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._command = args.command if isinstance(args, RunSpec) else next(iter(args or []), None)
        words = list(args.args) if isinstance(args, RunSpec) else list(args or [])
        self.explicit = explicit_settings(words, args.settings if isinstance(args, RunSpec) else {})
        self._config_files = [value for flag, value in zip(words, words[1:], strict=False) if flag == "--config"]
        self._config_files += [word.split("=", 1)[1] for word in words if word.startswith("--config=")]
        self._config_files += list(args.configs) if isinstance(args, RunSpec) else []
        try:
            if isinstance(args, RunSpec):
                self.config = parse_spec(parser, args)
            else:
                super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise UsageError(self._error_line(str(error))) from None

    def _error_line(self, message: str) -> str:
        command = f"dapt {self._command if self._command in TRAINER_SUBCOMMANDS else 'SUBCOMMAND'}"
        keys: set[str] = set()
        for subparser in getattr(self, "_subcommand_parsers", {}).values():
            defaults = subparser.get_defaults()
            keys |= {key for key in defaults.keys() if not key.startswith("model.")}  # noqa: SIM118 - a Namespace
        return error_line(message, command, keys, self._config_files, self.explicit)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would replace every --model.* setting by the checkpoint's hyperparameters (unpickling the file
        # with its own error messages); `check_same_model` compares them instead, once the run folder is known.
        return

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.trained: TrainedRun | None = None
        self.run_dir: Path | None = None
        ckpt_path = config.get("ckpt_path")
        if self.subcommand in EVALUATION_SUBCOMMANDS and ckpt_path and Path(ckpt_path).is_file():
            self.trained = TrainedRun.of(ckpt_path)
            restore(config, self.trained, self.explicit)  # the checkpoint's method, CLIP and data, unless flags say
        check_dataset_given(config, self.subcommand)
        derive_protocol_settings(config)
        check_clip_serves_method(config)
        check_devices_and_precision(config)
        check_checkpoint_request(config, self.subcommand)
        if self.subcommand is None or config.get("run") is None:
            return  # built without running (tests): no run folder
        self.run_dir = Path(config.run.dir) if config.run.get("dir") else default_run_folder(config, self.subcommand)
        config.run.dir = str(self.run_dir)
        if ckpt_path == "last":
            ckpt_path = last_checkpoint(self.run_dir)
        check_same_model(config, ckpt_path)
        point_outputs_at(config, self.run_dir, self.subcommand)

    def instantiate_classes(self) -> None:
        # As LightningCLI's, with the run folder claimed and created between the classes (whose settings are checked
        # as they are built) and the Trainer (whose logger and checkpoints write into it): nothing is created for a
        # command with a bad setting.
        try:
            self.config_init = self.parser.instantiate_classes(self.config)
        except (ValueError, TypeError) as error:
            cause = error  # jsonargparse wraps a constructor's own error (`--model.lr must be > 0`): say that one
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise cause from None
        self._open_run_folder()
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def _open_run_folder(self) -> None:
        if self.run_dir is None or not is_first_process():  # DDP's other ranks find it as the first one left it
            return
        config = self.config[self.subcommand]
        holder = holder_of(self.run_dir)
        if holder is not None:
            raise RunFolderError(
                f"{self.run_dir} is in use by another run ({describe(holder)}): wait for it to end, or choose another "
                "folder (--run.dir DIR)"
            )
        evaluation = self.subcommand in EVALUATION_SUBCOMMANDS
        # A finished evaluation is tested again (evaluations are cheap and change nothing); a finished fit is kept.
        resuming = evaluation or bool(config.get("ckpt_path"))
        check_run_folder(self.run_dir, resuming, config.run.overwrite or evaluation)
        ensure_writable_dir(self.run_dir, "--run.dir")
        self._claim = claimed(self.run_dir)
        if not self._claim.__enter__():  # lost a race with a run started at the same moment
            raise RunFolderError(f"{self.run_dir} is in use by another run: wait for it, or choose another folder")
        self.run_log = RunLog(self.run_dir / RUN_LOG)
        self.run_log.attach()  # before the data is read: its messages (a generated split) belong to the run

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Atomic saves and weights_only loads, unless the user configured their own checkpoint I/O.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        trainer.callbacks.extend(self.extra_callbacks)
        options = self.config[self.subcommand].get("run") if self.subcommand else None
        if options is not None and options.dir and self.subcommand in ("fit", "test"):
            after_test = self.subcommand == "fit" and options.test_after_fit
            settings = _yaml(self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False))
            folder = Path(options.dir)
            trainer.callbacks.append(MetricsFile(folder / METRICS_FILE, options.label, settings, after_test))
            trainer.callbacks.append(ClosingSummary(folder, after_test, self.run_log))
        return trainer

    def _name_run(self, stage: str) -> None:
        # Before trainer.fit/test: Lightning starts the W&B run before any callback's setup could name it.
        config = self.config[self.subcommand]
        run_info = config.get("run_info")
        if run_info is None or run_info.get("name_runs", True):
            options = config.get("run") or {}
            trained_on = self.trained.data if self.trained is not None else None
            name = options.get("name")
            name_run(self.trainer, self.model, self.datamodule, stage, name, options.get("group"), trained_on)

    def before_fit(self) -> None:
        self._name_run("fit")

    def before_test(self) -> None:
        self._name_run("test")

    def before_validate(self) -> None:
        self._name_run("validate")

    def after_fit(self) -> None:
        options = self.config[self.subcommand].get("run")
        if options is not None and options.test_after_fit:
            # The last epoch's model, as the official protocol (no best-validation selection).
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=None)

    def close(self) -> None:
        """End the run's W&B runs (an in-process run would otherwise reuse them for the next), its log and its claim
        on the run folder."""
        # W&B may fail to write its last files (a full disk): the run's own error says what happened.
        with contextlib.suppress(OSError):
            finish_wandb_runs(getattr(self, "trainer", None))
        if self.run_log is not None:
            self.run_log.detach()
        claim, self._claim = self._claim, None
        if claim is not None:
            claim.__exit__(None, None, None)


def _yaml(text: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(text)


def _method_setting_names() -> set[str]:

    return set().union(*(init_arguments(method) for method in registered_methods()))
