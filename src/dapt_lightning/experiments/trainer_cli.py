"""``dapt fit/validate/test/predict``: a LightningCLI over the method classes (``--model NAME``, or YAML's
``model: {class_path, init_args}``) and :class:`FewShotDataModule`.

Beyond LightningCLI it settles what the official protocol derives (``checks.py``), adds the evaluation callbacks,
and keeps every run in a folder of its own (``runs.py``) with its log, ``metrics.json`` and closing summary
(``callbacks/run_files.py``). It parses a command line or a :class:`RunSpec`.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dapt_lightning.arguments import UsageError, argument_error_line
from dapt_lightning.callbacks.embeddings import EmbeddingPlots
from dapt_lightning.callbacks.evaluation import DispersionMonitor, PerClassAccuracy
from dapt_lightning.callbacks.predictions import PredictionWriter
from dapt_lightning.callbacks.prototypes import PrototypeCallback
from dapt_lightning.callbacks.run_files import METRICS_FILE, RUN_LOG, ClosingSummary, MetricsFile, RunLog
from dapt_lightning.callbacks.run_info import LoggedSaveConfig, RunInfo, name_run
from dapt_lightning.checkpoint import SafeCheckpointIO
from dapt_lightning.data.datamodule import FewShotDataModule
from dapt_lightning.experiments.checks import (
    check_checkpoint_request,
    check_clip_serves_method,
    check_devices_and_precision,
    check_same_model,
    configured_method,
    derive_protocol_settings,
)
from dapt_lightning.experiments.run_spec import RunSpec, parse_spec
from dapt_lightning.experiments.runs import (
    LAST_CHECKPOINT,
    RunOptions,
    check_run_folder,
    evaluation_folder,
    last_checkpoint,
    run_folder,
    run_folder_of_checkpoint,
)
from dapt_lightning.loggers import finish_wandb_runs
from dapt_lightning.methods import CLIPMethod, ZeroShotCLIP, registered_methods
from dapt_lightning.methods.registry import init_arguments, method_class
from dapt_lightning.storage import ensure_writable_dir

TRAINER_SUBCOMMANDS = {
    "fit": "train a method (then test it with --run.test_after_fit true)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint (or zero-shot CLIP) on the test split",
    "predict": "predict classes for the test split with a checkpoint",
}
"""LightningCLI's subcommands, as ``dapt --help`` describes them."""

DEFAULT_METHOD = "dapt_lightning.methods.DAPT"
DEFAULT_LOGGER = {"class_path": "dapt_lightning.loggers.DAPTWandbLogger"}
# The DataModule shards data itself (exact evaluation, DDP equal to one process): Lightning must not re-wrap it.
TRAINER_DEFAULTS = {"logger": DEFAULT_LOGGER, "use_distributed_sampler": False}
OLD_METHOD_KEY = "method"
"""The setting that chose a method before methods were classes."""
UNKNOWN_CLASS = re.compile(r"Expected a dot import path string: (\S+)")
FAILED_IMPORT = re.compile(
    r"Problem with given class_path '([\w.]+)':\s*(No module named [^\n]+|[^\n]*has no attribute[^\n]*)"
)
CLASS_PATH = re.compile(r"Problem with given class_path '([\w.]+)'")


class DAPTCLI(LightningCLI):
    """LightningCLI with the method classes, protocol defaults, the evaluation callbacks and run folders.

    Args:
        args: a command line (``["fit", "--config", ...]``) or a :class:`RunSpec`.
        callbacks: more callbacks for this run's Trainer (``dapt tune``'s validation reporter).
        **kwargs: LightningCLI's (``run=False`` builds without running).
    """

    def __init__(self, args: list[str] | RunSpec | None = None, callbacks: tuple[L.Callback, ...] = (), **kwargs: Any):
        self.run_log: RunLog | None = None
        self.extra_callbacks = list(callbacks)
        try:
            super().__init__(
                model_class=CLIPMethod,
                subclass_mode_model=True,
                datamodule_class=FewShotDataModule,
                trainer_defaults=TRAINER_DEFAULTS,
                save_config_callback=LoggedSaveConfig,
                save_config_kwargs={"overwrite": True},
                args=args,
                **kwargs,
            )
        except BaseException:
            self.close()
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
        try:
            if isinstance(args, RunSpec):
                self.config = parse_spec(parser, args)
            else:
                super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise UsageError(self._error_line(str(error))) from None

    def _error_line(self, message: str) -> str:
        command = f"dapt {self._command if self._command in TRAINER_SUBCOMMANDS else 'SUBCOMMAND'}"
        if f"Option '{OLD_METHOD_KEY}' is not accepted" in message:
            return (
                "--model.method is gone: methods are classes now. Select one with --model NAME (DAPT, CoOp, VPT, "
                "CoOpVPT, ZeroShotCLIP) or, in YAML, model: {class_path: dapt_lightning.methods.DAPT, init_args: "
                "{...}} (README, Running experiments)"
            )
        unknown_method = UNKNOWN_CLASS.search(message)
        if unknown_method is not None and message.startswith('Parser key "model"'):
            names = [method.__name__ for method in registered_methods()]
            close = difflib.get_close_matches(unknown_method.group(1), names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            return (
                f"--model {unknown_method.group(1)}: no such method; {hint}choose one of {', '.join(names)}, or give "
                "a method class's import path (my_package.MyMethod)"
            )
        failed_import = FAILED_IMPORT.search(message)
        if failed_import is not None and message.startswith('Parser key "model"'):
            path, reason = failed_import.groups()
            return f"--model {path}: cannot import it ({reason.strip()}); is its package installed?"
        keys: set[str] = set()
        for subparser in getattr(self, "_subcommand_parsers", {}).values():
            defaults = subparser.get_defaults()
            keys |= {key for key in defaults.keys() if not key.startswith("model.")}  # noqa: SIM118 - a Namespace
        owner = CLASS_PATH.search(message)  # a setting the selected method does not take: suggest one it takes
        methods = [_method_or_none(owner.group(1))] if owner is not None else registered_methods()
        methods = [method for method in methods if method is not None] or registered_methods()
        keys |= {f"model.{name}" for method in methods for name in init_arguments(method)}
        return argument_error_line(message, sorted(keys), command)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would replace every --model.* setting by the checkpoint's hyperparameters (unpickling the file
        # with its own error messages); `check_same_model` compares them instead, once the run folder is known.
        return

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        derive_protocol_settings(config)
        check_clip_serves_method(config)
        check_devices_and_precision(config)
        check_checkpoint_request(config, self.subcommand)
        if self.subcommand is None or config.get("run") is None:
            return  # built without running (tests): no run folder
        run_dir = Path(config.run.dir) if config.run.get("dir") else default_run_folder(config, self.subcommand)
        config.run.dir = str(run_dir)
        ckpt_path = last_checkpoint(run_dir) if config.get("ckpt_path") == "last" else config.get("ckpt_path")
        check_same_model(config, ckpt_path)
        if is_first_process():  # processes relaunched for DDP find the folder as the first one left it
            resuming = self.subcommand != "fit" or bool(config.get("ckpt_path"))
            check_run_folder(run_dir, resuming, config.run.overwrite)
            ensure_writable_dir(run_dir, "--run.dir")
            self.run_log = RunLog(run_dir / RUN_LOG)
            self.run_log.attach()  # before the data is read: its messages (a generated split) belong to the run
        point_outputs_at(config, run_dir, self.subcommand)

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
            name_run(self.trainer, self.model, self.datamodule, stage, options.get("name"), options.get("group"))

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
        """End the run's W&B runs (an in-process run would otherwise reuse them for the next) and its log."""
        finish_wandb_runs(getattr(self, "trainer", None))
        if self.run_log is not None:
            self.run_log.detach()


def _yaml(text: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(text)


def _method_setting_names() -> set[str]:
    from dapt_lightning.methods import registered_methods
    from dapt_lightning.methods.registry import init_arguments

    return set().union(*(init_arguments(method) for method in registered_methods()))


def _method_or_none(reference: str) -> type[CLIPMethod] | None:
    try:
        return method_class(reference)
    except ValueError:
        return None


def default_run_folder(config: Any, subcommand: str) -> Path:
    """Where a run goes without ``--run.dir``: its own folder (``fit``, zero-shot ``test``), or, for evaluating a
    checkpoint, a subfolder of the checkpoint's run folder (``<run>/test/<dataset>/``)."""
    data, options = config.data, config.run
    method = configured_method(config)
    label = options.get("label") or method.name or method.__name__.lower()
    zero_shot = issubclass(method, ZeroShotCLIP)
    shots = 0 if zero_shot else data.num_shots  # zero-shot CLIP uses no training image
    own = run_folder(options.root, data.dataset, label, shots, data.seed, data.subsample)
    if subcommand == "fit" or (zero_shot and not config.get("ckpt_path")):
        return own
    ckpt_path = config.get("ckpt_path")
    trained = run_folder_of_checkpoint(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None
    return evaluation_folder(trained or own, subcommand, data.dataset, data.subsample)


def is_first_process() -> bool:
    """False in the processes Lightning relaunches for the other DDP ranks (they find LOCAL_RANK/NODE_RANK set)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def point_outputs_at(config: Any, run_dir: Path, subcommand: str) -> None:
    """Send the trainer's files, the logger's and the last checkpoint into ``run_dir``."""
    config.trainer.default_root_dir = str(run_dir)
    logger = config.trainer.get("logger")
    if logger not in (None, False, True) and "save_dir" in (logger.get("init_args") or {}):
        logger.init_args.save_dir = str(run_dir)
    if config.get("checkpoint") is not None:
        # The CLI's ModelCheckpoint (save_last every epoch) writes into the run folder, where sweeps resume from.
        # An evaluation saves nothing: its callback keeps the trained run's folder, which it restores from.
        ckpt_path = config.get("ckpt_path")
        evaluated = subcommand != "fit" and ckpt_path and Path(ckpt_path).is_file()
        config.checkpoint.dirpath = str(Path(ckpt_path).parent if evaluated else run_dir / LAST_CHECKPOINT.parent)
