"""Evaluating a checkpoint: what it recorded (its method, CLIP and prompt settings, the data it was trained on) is
used wherever the command line does not say otherwise. A config file's values never replace what the checkpoint
recorded: a setting wins over the record only when a flag (or a RunSpec's own setting) gives it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_info

from dapt_lightning.checkpoint import load_checkpoint_file
from dapt_lightning.methods.registry import class_path, init_arguments, method_reference

RECORDED_DATA = ("dataset", "num_shots", "seed", "subsample", "dataset_options")
"""The DataModule settings that say what a checkpoint was trained on, restored when testing it (and the data root,
when it is still there)."""
NOT_RESTORED = ("classnames",)
"""Method settings that belong to the data being tested, not to the checkpoint (except for a user's own images,
which have no classes of their own: they are classified into the checkpoint's)."""


@dataclass(frozen=True)
class TrainedRun:
    """What a checkpoint says about the run that wrote it."""

    path: Path
    method: type
    settings: dict[str, Any]
    data: dict[str, Any]
    root: str | None
    clip: dict[str, Any]

    @classmethod
    def of(cls, path: str | Path) -> TrainedRun:
        """Read what the checkpoint at ``path`` recorded (``torch.load(weights_only=True)``)."""
        checkpoint = load_checkpoint_file(path)
        method, settings = method_reference(checkpoint, path)
        recorded = checkpoint.get("datamodule_hyper_parameters") or {}
        data = {k: v for k, v in recorded.items() if k in RECORDED_DATA}
        return cls(
            Path(path), method, settings, data, recorded.get("root"), dict(checkpoint.get("clip_identity") or {})
        )


def explicit_settings(words: Iterable[str], settings: Mapping[str, Any] = ()) -> set[str]:
    """The dotted settings a command line (``--model.lr 0.1``, ``--data.dataset=x``, ``--model CoOp``: ``model``)
    and a RunSpec's own ``settings`` give; a setting given as ``--model.init_args.lr`` counts as ``model.lr``."""
    keys = {word[2:].split("=", 1)[0] for word in words if word.startswith("--")} | set(settings)
    return {key.replace("model.init_args.", "model.") for key in keys}


def restore(config: Any, trained: TrainedRun, explicit: set[str]) -> None:
    """Set, in a parsed ``dapt test/validate/predict`` configuration, the method, its settings and the data settings
    the checkpoint recorded, except those in ``explicit``.

    Raises:
        FileNotFoundError: the CLIP weights file the checkpoint was trained with has moved, and no
            ``--model.pretrained`` says where it is now.
    """
    own_images = bool(config.data.get("images"))
    said = _config_differences(config, trained, explicit, own_images)
    current = config.model.init_args
    settings = {k: v for k, v in trained.settings.items() if own_images or k not in NOT_RESTORED}
    if "model" not in explicit:
        accepted = init_arguments(trained.method)
        given = {k: current[k] for k in accepted if f"model.{k}" in explicit and k in current}
        config.model = Namespace(class_path=class_path(trained.method), init_args=Namespace(**{**settings, **given}))
    else:
        for name, value in settings.items():
            if f"model.{name}" not in explicit and name in current:
                current[name] = value
    _check_weights_file(config.model.init_args, trained, explicit)
    if own_images:
        return  # no dataset is read: the images are classified into the checkpoint's classes
    if "data.dataset" in explicit and config.data.get("dataset") != trained.data.get("dataset"):
        return  # another dataset: the recorded data settings (root, shots, options) were the trained dataset's
    for name, value in trained.data.items():
        if f"data.{name}" not in explicit:
            config.data[name] = value
    root = trained.root
    if "data.root" not in explicit and root is not None and Path(root).is_dir():
        config.data.root = root  # where the data was, if it is still there (another working directory finds it)
    if said:
        rank_zero_info(
            f"Testing {trained.path} as it was trained: " + "; ".join(said) + ". A flag says otherwise "
            "(--data.dataset NAME to test on another dataset)."
        )


def _config_differences(config: Any, trained: TrainedRun, explicit: set[str], own_images: bool) -> list[str]:
    """What the configuration says that the checkpoint's record replaces, for the line that says so."""
    said = []
    model = config.model
    if "model" not in explicit and model.class_path != class_path(trained.method):
        said.append(f"method {trained.method.__name__} (the config: {model.class_path.rsplit('.', 1)[-1]})")
    for name in ("clip_name", "pretrained"):
        recorded, configured = trained.settings.get(name), model.init_args.get(name)
        if f"model.{name}" not in explicit and recorded != configured:
            said.append(f"{name} {recorded} (the config: {configured})")
    other_dataset = "data.dataset" in explicit and config.data.get("dataset") != trained.data.get("dataset")
    for name, recorded in () if own_images or other_dataset else trained.data.items():
        configured = config.data.get(name)
        if f"data.{name}" not in explicit and configured is not None and recorded != configured:
            said.append(f"{name} {recorded} (the config: {configured})")
    return said


def _check_weights_file(settings: Any, trained: TrainedRun, explicit: set[str]) -> None:
    """A weights file recorded by the checkpoint that is no longer there: one line naming it and the flag to give."""
    recorded = settings.get("pretrained")
    if "model.pretrained" in explicit or not recorded or not Path(str(recorded)).is_absolute():
        return
    if not Path(recorded).is_file():
        digest = str(trained.clip.get("weights_sha256") or "")[:12]
        raise FileNotFoundError(
            f"{trained.path} was trained on the CLIP weights file {recorded}, which is not there any more: pass its "
            f"new place with --model.pretrained PATH (the file whose weights hash to {digest}...)"
        )
