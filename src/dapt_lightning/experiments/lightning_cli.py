"""``dapt fit/validate/test/predict``: a LightningCLI over DAPTModule and DAPTDataModule that runs experiments.

Beyond LightningCLI it links the class names from the data to the model, derives settings the official protocol
fixes (few-shot seed, epochs, the zero-shot template, the CLIP's image size), adds the prototype, logging and
checkpoint callbacks, and with ``--run.dir`` keeps the whole run in one folder ending with ``metrics.json``.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from dapt_lightning.callbacks.embeddings import EmbeddingPlots
from dapt_lightning.callbacks.evaluation import DispersionMonitor, PerClassAccuracy
from dapt_lightning.callbacks.predictions import PredictionWriter
from dapt_lightning.callbacks.prototypes import PrototypeCallback
from dapt_lightning.callbacks.run_info import LoggedSaveConfig, RunInfo, name_run
from dapt_lightning.checkpoint import SafeCheckpointIO, load_checkpoint_file, read_datamodule_settings
from dapt_lightning.data.datamodule import DAPTDataModule
from dapt_lightning.data.registry import dataset_template
from dapt_lightning.experiments.runs import (
    LAST_CHECKPOINT,
    METRICS_FILE,
    RUN_LOG,
    RunOptions,
    check_run_folder,
    evaluation_folder,
    last_checkpoint,
    metric_values,
    run_folder,
    run_folder_of_checkpoint,
    run_record,
    write_metrics,
)
from dapt_lightning.methods import method_spec
from dapt_lightning.model.clip import fill_clip_preprocessing
from dapt_lightning.model.families import config_method_refusal
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
        # One checkpoint file per run, written after every training epoch: the latest is kept, named last.ckpt (what
        # --ckpt_path last finds). More files (best by a metric, every epoch) when --checkpoint.* asks for them.
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._run_log: RunLog | None = None
        try:
            super().__init__(*args, **kwargs)
        finally:
            if self._run_log is not None:
                self._run_log.close()

    def before_instantiate_classes(self) -> None:
        self._run_started = time.time()
        config = self.config[self.subcommand] if self.subcommand else self.config
        derive_protocol_settings(config)
        check_clip_serves_method(config)
        check_devices_and_precision(config)
        check_checkpoint_request(config, self.subcommand)
        if self.subcommand is None or config.get("run") is None:
            return  # built without running (tests): no run folder
        run_dir = Path(config.run.dir) if config.run.get("dir") else default_run_folder(config, self.subcommand)
        config.run.dir = str(run_dir)
        check_same_model(config, run_dir)
        if is_first_process():  # processes relaunched for DDP find the folder as the first one left it
            resuming = self.subcommand != "fit" or bool(config.get("ckpt_path"))
            check_run_folder(run_dir, resuming, config.run.overwrite)
            ensure_writable_dir(run_dir, "--run.dir")
            self._run_log = RunLog(run_dir / RUN_LOG)
        point_outputs_at(config, run_dir, self.subcommand)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        # A bad setting raises (one line, see parse_arguments) instead of printing the whole usage and exiting.
        parser.exit_on_error = False
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as error:
            keys: set[str] = set()
            for subparser in getattr(self, "_subcommand_parsers", {}).values():
                keys |= set(subparser.get_defaults().keys())
            raise ValueError(argument_error_line(str(error), sorted(keys))) from None

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would replace every --model.* setting by the checkpoint's hyperparameters (unpickling the file
        # with its own error messages); `check_same_model` compares them instead, once the run folder is known.
        return

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
            self._summarise(Path(options.dir))

    def after_test(self) -> None:
        options = self.config[self.subcommand].get("run")
        if options is not None and options.dir:
            self._write_run_metrics("test", {})
            self._summarise(Path(options.dir))

    def _summarise(self, run_dir: Path) -> None:
        if not self.trainer.is_global_zero:
            return
        lines = closing_summary(run_dir, self.trainer.callback_metrics, self.trainer.loggers)
        print("\n".join(lines), flush=True)
        if self._run_log is not None:
            self._run_log.write(lines)

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
    fill_clip_preprocessing(config.data, config.model.clip_name, config.model.pretrained)


def check_clip_serves_method(config: Any) -> None:
    """Refuse, before any data or weights are read, a method the CLIP's towers cannot serve (``model/families.py``):
    visual prompts on a convolutional image tower, a Hugging Face text tower."""
    refusal = config_method_refusal(config.model.clip_name, config.model.method)
    if refusal is not None:
        raise ValueError(refusal)


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


def default_run_folder(config: Any, subcommand: str) -> Path:
    """Where a run goes without ``--run.dir``: its own folder (``fit``, zero-shot ``test``), or, for evaluating a
    checkpoint, a subfolder of the checkpoint's run folder (``<run>/test/<dataset>/``)."""
    data, options = config.data, config.run
    method = config.model.method
    label = options.get("label") or method
    zero_shot = method == "zeroshot"
    shots = 0 if zero_shot else data.num_shots  # zero-shot CLIP uses no training image
    own = run_folder(options.root, data.dataset, label, shots, data.seed, data.subsample)
    if subcommand == "fit" or (zero_shot and not config.get("ckpt_path")):
        return own
    ckpt_path = config.get("ckpt_path")
    trained = run_folder_of_checkpoint(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None
    return evaluation_folder(trained or own, subcommand, data.dataset, data.subsample)


def argument_error_line(message: str, keys: list[str]) -> str:
    """One line for a command-line or config error: what is wrong, and the closest valid setting to an unknown one."""
    line = " ".join(message.split())
    unknown = re.search(r"(?:option '|arguments: --)([\w.]+)", line)
    if unknown is None:
        return f"{line} (`dapt SUBCOMMAND --help` lists every setting)"
    close = difflib.get_close_matches(unknown.group(1), keys, n=1, cutoff=0.6)
    hint = f"did you mean --{close[0]}?" if close else "`dapt SUBCOMMAND --help` lists every setting"
    return f"unknown setting --{unknown.group(1)} ({line}); {hint}"


MODEL_SETTINGS = (
    "method",
    "clip_name",
    "quick_gelu",
    "text_tokens",
    "text_init",
    "class_specific_context",
    "visual_tokens",
)
"""``--model.*`` settings that decide the shapes and meaning of a checkpoint's prompts: they must match it. Every
other setting (where the CLIP weights are, text encoding, compilation, learning rate, ...) is the command line's."""


def check_same_model(config: Any, run_dir: Path) -> None:
    """Refuse, in one line, a ``--ckpt_path`` trained with other model-defining settings than this command's."""
    ckpt_path = config.get("ckpt_path")
    if ckpt_path == "last":
        ckpt_path = last_checkpoint(run_dir)
    if not ckpt_path or not Path(ckpt_path).is_file():
        return
    trained = load_checkpoint_file(ckpt_path).get("hyper_parameters") or {}
    for name in MODEL_SETTINGS:
        if name in trained and trained[name] != config.model.get(name):
            raise ValueError(
                f"--model.{name} {config.model.get(name)!r} differs from the checkpoint's {trained[name]!r} "
                f"({ckpt_path}): its prompts fit only the model they were trained with. Drop the setting (or set it "
                f"to {trained[name]!r}), or use a checkpoint trained with it."
            )


def check_devices_and_precision(config: Any) -> None:
    """Before any process starts: the global batch must split evenly over the processes, and the precision recorded
    must be the one that runs (16-bit floats are not supported on the CPU; bf16 is)."""
    trainer = config.trainer
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes") or 1
    count = process_count(devices)
    if count is not None and count > 0 and config.data.batch_size % (count * nodes):
        world = count * nodes
        raise ValueError(
            f"--data.batch_size {config.data.batch_size} is the global batch, split over {world} processes "
            f"(--trainer.devices {devices} x --trainer.num_nodes {nodes}): use a multiple of {world}, e.g. "
            f"{world * max(1, round(config.data.batch_size / world))}"
        )
    if str(trainer.get("precision")) in ("16-mixed", "16", "16-true") and runs_on_cpu(trainer.get("accelerator")):
        rank_zero_warn(
            f"--trainer.precision {trainer.precision}: the CPU has no float16 kernels for training; running and "
            "recording bf16-mixed instead"
        )
        trainer.precision = "bf16-mixed"


def process_count(devices: Any) -> int | None:
    """The processes per node ``--trainer.devices`` asks for (a count, ``"3"``, a list of ids), None for ``auto``."""
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str):
        devices = devices.strip()
        if "," in devices:
            return len([part for part in devices.split(",") if part.strip()])
        return int(devices) if devices.lstrip("-").isdigit() else None
    return devices if isinstance(devices, int) else None


def runs_on_cpu(accelerator: Any) -> bool:
    """Whether ``--trainer.accelerator`` resolves to the CPU."""
    if accelerator == "cpu":
        return True
    return accelerator in (None, "auto") and not torch.cuda.is_available() and not torch.backends.mps.is_available()


def is_first_process() -> bool:
    """False in the processes Lightning relaunches for the other DDP ranks (they find LOCAL_RANK/NODE_RANK set)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def closing_summary(run_dir: Path, metrics: dict[str, Any], loggers: list[Any]) -> list[str]:
    """The lines that end a run: its metrics and where everything went (the W&B sync command once)."""
    lines = [f"Run folder: {run_dir}"]
    shown = {k: v for k, v in metric_values(metrics, ("test/", "val/")).items() if "dispersion" not in k}
    if shown:
        lines.append("  " + "  ".join(f"{name} {value:.4f}" for name, value in shown.items() if value is not None))
    for label, path in (("checkpoint", last_checkpoint(run_dir)), ("metrics", run_dir / METRICS_FILE)):
        if path.is_file():
            lines.append(f"  {label:<10} {path}")
    lines.append(f"  {'log':<10} {run_dir / RUN_LOG}")
    for logger in loggers:
        offline = getattr(logger, "offline_run_dir", None)
        if offline is not None:
            lines.append(f"  {'W&B':<10} saved offline; upload it with: wandb sync {offline}")
    return lines


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


def cli_main(
    args: list[str] | None = None, run: bool = True, cli_class: Callable[..., DAPTCLI] | None = None, **kwargs: Any
) -> DAPTCLI:
    """Build (and by default run) the LightningCLI; tests call this with an argument list, ``dapt tune`` with its
    own ``cli_class`` (a DAPTCLI subclass, its own arguments bound)."""
    return (cli_class or DAPTCLI)(
        model_class=DAPTModule,
        datamodule_class=DAPTDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=LoggedSaveConfig,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        **kwargs,
    )


class RunLog:
    """A plain-text copy of what a run logs (Lightning's and dapt_lightning's messages), in its folder."""

    LOGGERS = ("lightning.pytorch", "lightning.fabric", "dapt_lightning")

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self.handler)

    def write(self, lines: list[str]) -> None:
        """Append ``lines`` (printed to the console as well) to the log."""
        self.handler.stream.write("\n".join(lines) + "\n")
        self.handler.flush()

    def close(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self.handler)
        self.handler.close()


QUIET_WARNINGS = (
    # Raised inside Lightning by this torch version; nothing a user can act on.
    r".*isinstance\(treespec, LeafSpec\).*",
    # The frozen CLIP is in eval mode on purpose (no dropout, fixed statistics) while the prompts train.
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # `dapt` hands LightningCLI the arguments it was given, which are also sys.argv: no mistake to warn about.
    r"LightningCLI's args parameter is intended to run from within Python",
)
"""The warnings every ``dapt`` run keeps off the console."""


@contextmanager
def quiet_console() -> Iterator[None]:
    """The console of a ``dapt`` run: no warnings a user cannot act on, no product tips, no W&B banner (the
    closing summary says where the W&B run went and how to upload it)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where rank_zero_info logs from
    with warnings.catch_warnings():
        for message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        tips.addFilter(skip_advertisements)
        try:
            yield
        finally:
            tips.removeFilter(skip_advertisements)


def trainer_main(argv: list[str]) -> int:
    """Run ``dapt fit|validate|test|predict ARGV``; return the exit status."""
    with quiet_console():
        cli_main(argv)
    return 0


def skip_advertisements(record: logging.LogRecord) -> bool:
    """Drop Lightning's product tips from the console: lines nobody needs to act on."""
    return not str(record.msg).startswith("💡 Tip")
