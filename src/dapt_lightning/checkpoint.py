"""Prompt-only checkpoints: what is saved, what is checked on load, and I/O that never unpickles arbitrary objects
nor leaves a half-written file."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dapt_lightning.model.clip import (
    ClipIdentity,
    ClipLoadError,
    FileKind,
    clip_weights_layout,
    identify_file,
    read_weights_file,
    unsafe_pickle_reason,
)
from dapt_lightning.storage import DiskFullError, atomic_write_bytes, disk_full_message, is_disk_full


class CheckpointFileError(ValueError):
    """A ``--ckpt_path`` file that is no dapt_lightning checkpoint: damaged, not a torch file, CLIP weights, or the
    checkpoint of another library or model. The message is one line naming the file and what to pass instead."""


class UnsafeCheckpointError(CheckpointFileError):
    """A checkpoint holds objects that ``torch.load(weights_only=True)`` refuses to build."""


CKPT_PATH_TAKES = "--ckpt_path takes a checkpoint written by `dapt fit` (RUN_DIR/checkpoints/last.ckpt, or `last`)"


def _read_torch_file(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` of ``path``, after making sure it is a torch.save file at all."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check --ckpt_path (or use `--ckpt_path last`)")
    kind = identify_file(path)
    if kind.kind == "damaged":
        raise CheckpointFileError(
            f"checkpoint {path} is {kind.description}: it was not completely written or copied. Copy it again, "
            "or pass another checkpoint (`--ckpt_path last` resumes from the run's last complete one)."
        )
    if kind.kind in ("torchscript", "safetensors"):
        raise CheckpointFileError(
            f"{path} is {_describe_tensor_file(path, kind)}, not a checkpoint. {CKPT_PATH_TAKES}."
        )
    if kind.kind == "other":
        raise CheckpointFileError(f"{path} is {kind.description}, not a checkpoint. {CKPT_PATH_TAKES}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"refusing to load checkpoint {path}: it holds objects other than tensors and plain Python values "
            f"({unsafe_pickle_reason(error)}). dapt_lightning never unpickles arbitrary code; only load checkpoints "
            "you trust, and re-save them as plain state dicts."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:200]
        raise CheckpointFileError(
            f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {reason}). Copy it again, or pass "
            "another checkpoint."
        ) from error


def _describe_tensor_file(path: Path, kind: FileKind) -> str:
    """``a TorchScript archive of CLIP weights (pass it as --model.pretrained ...)`` and the like."""
    try:
        is_clip = clip_weights_layout(read_weights_file(path).tensors) is not None
    except ClipLoadError:
        return f"{kind.description} that cannot be read (truncated or damaged?)"
    if is_clip:
        return f"{kind.description} of CLIP weights (pass it as --model.pretrained {path})"
    return f"{kind.description} of tensors"


def _refuse_foreign(path: Path, checkpoint: Any) -> None:
    """Raise :class:`CheckpointFileError` unless ``checkpoint`` was written by a dapt_lightning model."""
    if isinstance(checkpoint, dict) and "dapt_checkpoint_format" in checkpoint:
        return
    if not isinstance(checkpoint, dict):
        what = f"a torch.save file holding a {type(checkpoint).__name__}"
    elif clip_weights_layout(checkpoint) is not None:
        what = f"a state dict of CLIP weights (pass it as --model.pretrained {path})"
    elif "pytorch-lightning_version" in checkpoint:
        keys = ", ".join(list(checkpoint.get("state_dict") or {})[:3]) or "no tensors"
        what = f"the Lightning checkpoint of another model (no dapt_checkpoint_format key; its state dict holds {keys})"
    else:
        keys = ", ".join(str(k) for k in list(checkpoint)[:4]) or "nothing"
        what = f"a torch.save file of another library (a dict of {keys}, ...; no Lightning state)"
    raise CheckpointFileError(f"{path} is {what}, not a dapt_lightning checkpoint. {CKPT_PATH_TAKES}.")


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a dapt_lightning checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file holds objects other than tensors and plain values (nothing is unpickled).
        CheckpointFileError: the file is truncated, not a torch file (an image, random bytes), CLIP weights
            (state dict, safetensors, TorchScript), or another library's or model's checkpoint; one line naming the
            file, what it is and what to pass instead.
    """
    path = Path(path)
    checkpoint = _read_torch_file(path, map_location)
    _refuse_foreign(path, checkpoint)
    return checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """Saves atomically (temporary file, fsync, rename) and loads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            atomic_write_bytes(Path(path), buffer.getvalue())
        except OSError as error:
            if is_disk_full(error):
                raise DiskFullError(
                    f"could not write checkpoint {path}: {disk_full_message(Path(path).parent)}"
                ) from error
            raise OSError(
                f"could not write checkpoint {path}: {error}. The previous checkpoint there (if any) is intact; "
                "fix the folder (or give the run another one with --run.dir DIR), then resume with --ckpt_path last"
            ) from error

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        path = Path(path)
        checkpoint = _read_torch_file(path, map_location if map_location is not None else "cpu")
        # Lightning also passes bare model state dicts through here (ddp_spawn returns the trained weights so).
        bare_state = isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
        if not bare_state or clip_weights_layout(checkpoint) is not None:
            _refuse_foreign(path, checkpoint)
        return checkpoint


# ---------------------------------------------------------------------------------------------------------------
# What a prompt-only checkpoint holds, and what is checked when one is loaded.

CHECKPOINT_FORMAT = 2
"""Version of the prompt-only checkpoint layout (``checkpoint["dapt_checkpoint_format"]``): 2 records the method's
class (``checkpoint["method"]``); 1 (one module for every method) recorded ``hyper_parameters["method"]``."""
CLASS_SPECIFIC_STATE = ("prototypes", "prototypes_ready")
"""State that belongs to the training classes: dropped when prompts are evaluated on other classes."""


class ClipMismatchError(ValueError):
    """A checkpoint's prompts were trained on a different CLIP than the one this run loaded."""


def prompt_only_state(state: dict[str, torch.Tensor], frozen: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state`` without the frozen CLIP (rebuilt from its identity on load).

    The tower views register CLIP's modules under their own names too, so tensors are matched by storage, not by
    name prefix.
    """
    frozen_storage = {t.data_ptr() for t in frozen.state_dict().values() if t.numel()}
    return {
        k: v
        for k, v in state.items()
        if not k.startswith("model.clip.") and not (v.numel() and v.data_ptr() in frozen_storage)
    }


def check_clip_identity(saved: dict[str, Any], ours: ClipIdentity) -> None:
    """Refuse prompts trained on another CLIP: other architecture, weights or activation."""
    if not saved:
        return
    same_name = saved.get("name") == ours.name
    same_weights = saved.get("weights_sha256") is None or saved.get("weights_sha256") == ours.weights_sha256
    # The activation is no weight: the same weights with GELU instead of QuickGELU give other features.
    same_activation = saved.get("quick_gelu") is None or saved.get("quick_gelu") == ours.quick_gelu
    if not (same_name and same_weights and same_activation):
        raise ClipMismatchError(
            f"checkpoint was trained on CLIP {saved.get('name')!r} ({saved.get('pretrained')}, weights sha256 "
            f"{str(saved.get('weights_sha256'))[:12]}..., quick_gelu={saved.get('quick_gelu')}) but this run "
            f"loaded {ours.name!r} ({ours.pretrained}, {str(ours.weights_sha256)[:12]}..., "
            f"quick_gelu={ours.quick_gelu}). "
            "Use the same --model.clip_name/--model.pretrained/--model.quick_gelu as the training run."
        )


def check_shapes(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """Refuse tensors whose shapes differ from this model's (other prompt settings or CLIP architecture)."""
    for key, value in state.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            raise ClipMismatchError(
                f"checkpoint tensor {key!r} has shape {tuple(value.shape)} but this model's is "
                f"{tuple(own[key].shape)}: the checkpoint was made with other prompt settings or another CLIP "
                "architecture. Use the training run's --model.* settings."
            )


def transferable_state(
    state: dict[str, torch.Tensor],
    saved_classes: list[str],
    classes: list[str],
    source: str,
    *,
    fitting: bool,
) -> tuple[dict[str, torch.Tensor], str]:
    """The class-agnostic part of ``state`` (generic text context, visual prompts) for other classes, and a log line.

    Args:
        state: the checkpoint's state dict.
        saved_classes: the classes it was trained on; classes: this run's.
        source: the dataset it was trained on (for the log line).
        fitting: whether this run trains (resuming on other classes is refused).
    """
    if fitting:
        raise ValueError(
            f"--ckpt_path: the checkpoint was trained on {len(saved_classes)} other classes than this run's "
            f"{len(classes)}; resuming training needs the same dataset, shots and subsample "
            "settings. To evaluate those prompts on these classes use `dapt test`; to start anew, drop --ckpt_path."
        )
    context = state.get("model.text_prompt.txt_ctx")
    if context is not None and context.dim() == 3:
        raise ValueError(
            "the checkpoint's text context is class-specific (--model.class_specific_context true): it cannot "
            f"be used for other classes ({len(saved_classes)} in the checkpoint, {len(classes)} "
            "here). Evaluate on the training classes, or train a generic context."
        )
    dropped = sorted(k for k in state if k in CLASS_SPECIFIC_STATE)
    kept = {k: v for k, v in state.items() if k not in CLASS_SPECIFIC_STATE}
    # What was learned, by module (a prompt tensor, CoCoOp's meta-net, CLIP-LoRA's adapters of a tower)
    loaded = sorted({".".join(k.removeprefix("model.").split(".")[:2]) for k in kept})
    message = (
        f"Cross-dataset checkpoint: prompts trained on {len(saved_classes)} classes of {source!r}, evaluated on "
        f"{len(classes)} classes here. Loaded: {', '.join(loaded) or 'nothing'}; not loaded "
        f"(class-specific): {', '.join(dropped) or 'nothing'}. This run's class names are kept."
    )
    return kept, message


def read_datamodule_settings(path: str | Path) -> dict[str, Any]:
    """The DataModule settings a checkpoint was trained with (dataset, shots, seed, subsample, ...)."""
    checkpoint = load_checkpoint_file(path)
    return dict(checkpoint.get("datamodule_hyper_parameters") or {})
