"""What a weights or checkpoint file is, judged from its bytes, and reading its tensors without unpickling
anything but tensors and plain values."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from dapt_lightning.model.clip.errors import ClipLoadError, first_line

# OpenAI's archives store three ints as tensors beside the weights; they are no parameter of any model.
_OPENAI_INT_KEYS = ("input_resolution", "context_length", "vocab_size")


# The first bytes of `torch.save`'s pre-1.6 (non-zip) format: pickle protocol 2, then torch's magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x93NUMPY", "a NumPy array file"),
)


@dataclass(frozen=True)
class FileKind:
    """What a weights or checkpoint file is, judged from its first bytes and, for zip archives, its member names.

    Attributes:
        kind: ``torchscript``, ``torch`` (a ``torch.save`` file), ``safetensors``, ``damaged`` (the start of one
            of those, cut short or corrupted) or ``other``.
        description: the same in words, for messages (``"a JPEG image"``, ``"a truncated safetensors file"``).
    """

    kind: Literal["torchscript", "torch", "safetensors", "damaged", "other"]
    description: str


def identify_file(path: str | os.PathLike[str]) -> FileKind:
    """Tell a TorchScript archive, a ``torch.save`` file and a safetensors file from damaged and unrelated files."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):  # the central directory sits at the end: a cut-off zip has none
            return FileKind("damaged", "a truncated or damaged zip archive (the format of torch.save and TorchScript)")
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
            return FileKind("torchscript", "a TorchScript archive")
        if any(name.endswith("data.pkl") for name in names):
            return FileKind("torch", "a torch.save file")
        return FileKind("other", "a zip archive that torch.save did not write")
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return FileKind("torch", "a torch.save file (legacy format)")
    header_size = int.from_bytes(head[:8], "little")
    if len(head) > 8 and head[8:9] == b"{" and header_size < 1 << 30:  # a safetensors header: length, then JSON
        if header_size + 8 <= size:
            return FileKind("safetensors", "a safetensors file")
        return FileKind("damaged", "a truncated safetensors file")
    for signature, description in _SIGNATURES:
        if head.startswith(signature):
            return FileKind("other", description)
    if not head:
        return FileKind("other", "an empty file")
    return FileKind("other", "a file of unknown content (neither torch.save, TorchScript nor safetensors)")


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """True for a TorchScript (JIT) zip archive such as OpenAI's ``ViT-B-16.pt``."""
    return identify_file(path).kind == "torchscript"


def unsafe_pickle_reason(error: pickle.UnpicklingError) -> str:
    """What ``torch.load(weights_only=True)`` refused, in one line (e.g. ``Unsupported global: GLOBAL
    pathlib.PosixPath was not an allowed global by default``).

    Its message is a paragraph whose advice includes ``weights_only=False``, which we never want to pass on.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch colours part of it
    text = text.split("WeightsUnpickler error:", 1)[-1]
    boilerplate = ("Weights only load failed", "(1)", "(2)", "Please file an issue", "Check the documentation")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(boilerplate):
            return line.split(". ")[0].rstrip(".")
    return "unpickling refused"


def _unwrap_state_dict(obj: object) -> tuple[object, bool]:
    """``obj``'s state dict and whether it was wrapped as in open_clip's training checkpoints.

    Those are ``{"epoch", "name", "state_dict", ...}`` with ``module.``-prefixed keys when saved under DDP.
    """
    wrapped = isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)
    state = obj["state_dict"] if wrapped else obj
    if isinstance(state, dict) and state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, wrapped


def clip_weights_layout(obj: object) -> Literal["openai", "open_clip"] | None:
    """``openai`` for a state dict in OpenAI's layout, ``open_clip`` for one in open_clip's own, None otherwise.

    OpenAI's layout (also open_clip's for the models it shares with OpenAI) has the text tower at the top level
    (``positional_embedding``, ``token_embedding.weight``, ``transformer.resblocks.*``, ``ln_final``,
    ``text_projection``) beside ``visual.conv1`` (ViT) or ``visual.layer1`` (ResNet). open_clip's own layout for
    other text towers puts them under ``text.``. A wrapped open_clip training checkpoint counts as its state dict.
    """
    state, _ = _unwrap_state_dict(obj)
    if not isinstance(state, dict) or not state:
        return None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        return None
    keys = set(state)
    text_top_level = {"positional_embedding", "token_embedding.weight", "ln_final.weight", "text_projection"}
    visual_stem = {"visual.conv1.weight", "visual.layer1.0.conv1.weight"}
    if text_top_level <= keys and keys & visual_stem and any(k.startswith("transformer.resblocks.") for k in keys):
        return "openai"
    if any(k.startswith("visual.") for k in keys) and any(k.startswith("text.") for k in keys):
        return "open_clip"
    return None


@dataclass(frozen=True)
class WeightsFile:
    """The tensors of a CLIP weights file and how they were stored.

    Attributes:
        path: the file.
        kind: what :func:`identify_file` found (``torchscript``, ``torch`` or ``safetensors``).
        tensors: name -> tensor, unwrapped from an open_clip training checkpoint, without OpenAI's int entries.
        training_checkpoint: the tensors came wrapped in an open_clip training checkpoint (open_clip's format).
    """

    path: Path
    kind: FileKind
    tensors: dict[str, torch.Tensor]
    training_checkpoint: bool = False


def read_weights_file(path: str | os.PathLike[str]) -> WeightsFile:
    """Read the tensors of a TorchScript archive, a ``torch.save`` state dict or a safetensors file.

    Nothing is unpickled beyond tensors and plain values (``torch.load(weights_only=True)``; TorchScript archives
    are read by TorchScript's own loader).

    Raises:
        ClipLoadError: one line naming the file and what it is instead (damaged, an image, a dapt_lightning
            checkpoint, objects other than tensors, ...).
    """
    path = Path(path)
    kind = identify_file(path)
    if kind.kind == "damaged":
        raise ClipLoadError(f"{path} is {kind.description}: an interrupted download or copy? Fetch it again.")
    if kind.kind == "other":
        raise ClipLoadError(
            f"{path} is {kind.description}, not CLIP weights: pass OpenAI's TorchScript archive (ViT-B-16.pt) or a "
            "state dict saved with torch.save or safetensors."
        )
    try:
        if kind.kind == "torchscript":
            loaded: object = torch.jit.load(str(path), map_location="cpu").state_dict()
        elif kind.kind == "safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ClipLoadError(
            f"refusing to read {path}: it holds objects other than tensors and plain values "
            f"({unsafe_pickle_reason(error)}); save the weights as a plain state dict (torch.save or safetensors)."
        ) from error
    except Exception as error:  # torch, TorchScript and safetensors raise many types for damaged files
        raise ClipLoadError(
            f"{path} is {kind.description} that cannot be read ({first_line(error)}): truncated or damaged? "
            "Fetch it again."
        ) from error
    if isinstance(loaded, dict) and "dapt_checkpoint_format" in loaded:
        trained_on = (loaded.get("clip_identity") or {}).get("pretrained")
        raise ClipLoadError(
            f"{path} is a dapt_lightning checkpoint (learned prompts, no CLIP weights): pass it as --ckpt_path, "
            f"and as --model.pretrained the CLIP it was trained on ({trained_on})."
        )
    state, wrapped = _unwrap_state_dict(loaded)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        what = f"a {type(state).__name__}" if not isinstance(state, dict) else "a dict with values other than tensors"
        raise ClipLoadError(f"{path} holds {what}, not a state dict of CLIP weights.")
    tensors = {k: v for k, v in state.items() if k not in _OPENAI_INT_KEYS}
    return WeightsFile(path, kind, tensors, training_checkpoint=wrapped)
