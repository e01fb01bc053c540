"""What ``dapt fit/validate/test/predict`` settles before anything is built: the settings the official protocol
derives, and every check that can fail without reading data or weights (the one place each is made)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from dapt_lightning.arguments import UsageError
from dapt_lightning.checkpoint import load_checkpoint_file
from dapt_lightning.data.datamodule import IMAGES_ARE_FOR_PREDICT, NO_DATASET
from dapt_lightning.data.image_files import expand_images
from dapt_lightning.methods import CLIPMethod, TrainedMethod, method_class
from dapt_lightning.methods.compatibility import method_refusal
from dapt_lightning.schedule import official_max_epochs

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
EVALUATION_SUBCOMMANDS = ("test", "validate", "predict")
MODEL_SETTINGS = ("clip_name", "quick_gelu", "text_tokens", "text_init", "class_specific_context", "visual_tokens")
"""Method settings that decide the shapes and meaning of a checkpoint's prompts: they must match it. Every other
setting (where the CLIP weights are, text encoding, compilation, learning rate, ...) is the command line's."""


def configured_method(config: Any) -> type[CLIPMethod]:
    """The method class a parsed configuration selects (``--model NAME`` / ``model.class_path``)."""
    return method_class(config.model.class_path)


def method_settings(config: Any) -> Any:
    """The method's settings (``model.init_args``) of a parsed configuration."""
    return config.model.init_args


def check_dataset_given(config: Any, subcommand: str | None) -> None:
    """Refuse a run without a dataset before anything is named after it (``--data.dataset`` has no default), and
    a user's own images anywhere but ``predict``; images named that are not there are refused here too."""
    if config.data.get("images"):
        if subcommand not in (None, "predict"):
            raise UsageError(IMAGES_ARE_FOR_PREDICT)
        try:
            expand_images(config.data.images)
        except ValueError as error:
            raise UsageError(str(error)) from None
        return
    if not config.data.get("dataset"):
        raise UsageError(NO_DATASET)


def derive_protocol_settings(config: Any) -> None:
    """Fill in what the official protocol derives: the few-shot seed from ``seed_everything``, the epochs from the
    dataset and shot count."""
    seed = config.get("seed_everything")
    if config.data.seed is None and isinstance(seed, int) and not isinstance(seed, bool):
        config.data.seed = seed
    if config.trainer.max_epochs is None and config.data.get("dataset"):
        config.trainer.max_epochs = official_max_epochs(config.data.dataset, config.data.num_shots)


def check_clip_serves_method(config: Any) -> None:
    """Refuse, before any data or weights are read, a method the CLIP's towers cannot serve
    (``methods/compatibility.py``)."""
    refusal = method_refusal(configured_method(config), method_settings(config).clip_name)
    if refusal is not None:
        raise ValueError(refusal)


def check_checkpoint_request(config: Any, subcommand: str | None) -> None:
    """Refuse a missing ``--ckpt_path``, and evaluating untrained prompts."""
    ckpt_path = config.get("ckpt_path")
    if ckpt_path and ckpt_path not in SPECIAL_CKPT_PATHS and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path: checkpoint {ckpt_path} does not exist; check the path")
    method = configured_method(config)
    if subcommand in EVALUATION_SUBCOMMANDS and not ckpt_path and issubclass(method, TrainedMethod):
        raise ValueError(
            f"`dapt {subcommand}` of --model {method.__name__} needs --ckpt_path (a trained checkpoint): untrained "
            "prompts are random. Use --model ZeroShotCLIP for zero-shot CLIP."
        )


def check_same_model(config: Any, ckpt_path: str | Path | None) -> None:
    """Refuse, in one line, a checkpoint trained with another method or other prompt-defining settings."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return
    from dapt_lightning.methods.registry import method_reference

    checkpoint = load_checkpoint_file(ckpt_path)
    trained, trained_settings = method_reference(checkpoint, ckpt_path)
    method = configured_method(config)
    if trained is not method:
        raise ValueError(
            f"--model {method.__name__} differs from the checkpoint's method {trained.__name__} ({ckpt_path}): its "
            f"prompts fit only the method they were trained with. Use --model {trained.__name__}."
        )
    settings = method_settings(config)
    for name in MODEL_SETTINGS:
        if name in trained_settings and name in settings and trained_settings[name] != settings[name]:
            raise ValueError(
                f"--model.{name} {settings[name]!r} differs from the checkpoint's {trained_settings[name]!r} "
                f"({ckpt_path}): its prompts fit only the model they were trained with. Drop the setting (or set it "
                f"to {trained_settings[name]!r}), or use a checkpoint trained with it."
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
