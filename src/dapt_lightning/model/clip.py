"""Load a frozen CLIP with open_clip: by model name and pretrained tag, from a local file, or random."""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
TINY_CLIP_NAME = "dapt-tiny"
TINY_CLIP_WEIGHTS = ASSET_DIR / "dapt-tiny-synthetic.safetensors"

# Registering our tiny config beside open_clip's own lets every code path take it by name.
open_clip.add_model_config(MODEL_CONFIG_DIR)


class ClipWeightsUnavailableError(RuntimeError):
    """Pretrained weights could neither be found in the cache nor downloaded."""


class ClipLoadError(ValueError):
    """A CLIP name, tag or weights file that cannot be used."""


@dataclass(frozen=True)
class ClipIdentity:
    """What a checkpoint records to rebuild (and check) the frozen CLIP it was trained on."""

    name: str
    pretrained: str | None
    quick_gelu: bool
    weights_sha256: str | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """True for a TorchScript (JIT) zip archive such as OpenAI's ``ViT-B-16.pt``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(module: nn.Module) -> str:
    """Hex SHA-256 of a module's parameters and buffers (names, shapes and fp32 values), order-independent."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _wants_quick_gelu(name: str, pretrained: str | None, quick_gelu: bool | None) -> bool:
    if quick_gelu is not None:
        return quick_gelu
    config = open_clip.get_model_config(name) or {}
    # OpenAI's weights were trained with QuickGELU; open_clip 3.x builds plain GELU for them unless told.
    return pretrained == "openai" or bool(config.get("quick_gelu", False))


def _check_name(name: str) -> None:
    if open_clip.get_model_config(name) is None:
        raise ClipLoadError(
            f"--model.clip_name: unknown CLIP model {name!r}. Use one of open_clip.list_models(), "
            f"e.g. 'ViT-B-16', 'ViT-B-32', 'ViT-L-14', or {TINY_CLIP_NAME!r} for the tiny test model."
        )


def clip_image_size(name: str) -> int:
    """The input resolution of open_clip architecture ``name`` (224 for ViT-B-16, 64 for ``dapt-tiny``)."""
    _check_name(name)
    size = open_clip.get_model_config(name)["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, list | tuple) else size)


def _load_torchscript(path: Path, quick_gelu: bool) -> nn.Module:
    # TorchScript archives are read by torch.jit's own loader (no arbitrary pickle classes); we keep only
    # the tensors and rebuild a plain open_clip model from them.
    scripted = torch.jit.load(str(path), map_location="cpu")
    state_dict = {
        k: v for k, v in scripted.state_dict().items() if k not in ("input_resolution", "context_length", "vocab_size")
    }
    model = open_clip.model.build_model_from_openai_state_dict(state_dict, quick_gelu=quick_gelu)
    return model.float()  # build_model_from_openai_state_dict casts to fp16


def _load_file(name: str, path: Path, quick_gelu: bool) -> nn.Module:
    model = open_clip.create_model(name, pretrained=None, quick_gelu=quick_gelu, require_pretrained=False)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path))
    else:
        try:
            state_dict = open_clip.factory.load_state_dict(str(path), weights_only=True)
        except Exception as error:  # torch raises several types for unsafe or corrupt archives
            raise ClipLoadError(
                f"--model.pretrained: could not read CLIP weights from {path} ({type(error).__name__}: {error}). "
                "Pass an OpenAI TorchScript archive, a state-dict file saved with torch.save, or a .safetensors file."
            ) from error
    state_dict = {k: v.float() for k, v in state_dict.items()}
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ClipLoadError(
            f"--model.pretrained: the weights in {path} do not fit the architecture {name!r}: "
            f"{str(error).splitlines()[0]} ... Set --model.clip_name to the architecture the file was saved from."
        ) from error
    return model


def _load_tag(name: str, tag: str, quick_gelu: bool, cache_dir: str | None) -> nn.Module:
    known_tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in known_tags:
        raise ClipLoadError(
            f"--model.pretrained: {tag!r} is neither a pretrained tag of {name!r} nor an existing file. "
            f"Known tags: {', '.join(known_tags) or 'none'}."
        )
    try:
        return open_clip.create_model(name, pretrained=tag, quick_gelu=quick_gelu, cache_dir=cache_dir)
    except Exception as error:
        where = cache_dir or os.environ.get("HF_HUB_CACHE") or os.path.expanduser("~/.cache/huggingface/hub")
        raise ClipWeightsUnavailableError(
            f"Could not load pretrained CLIP weights for model {name!r} with tag {tag!r}: not found in the cache "
            f"({where}) and the download failed ({type(error).__name__}: {error}).\n"
            "Two ways out:\n"
            "  1. run once on a machine with network access (the weights are then cached), optionally with "
            "--model.cache_dir pointing at a shared folder;\n"
            "  2. pass a local file: --model.pretrained /path/to/ViT-B-16.pt (OpenAI TorchScript archive, "
            "state dict or .safetensors)."
        ) from error


def load_clip(
    name: str = "ViT-B-16",
    pretrained: str | None = "openai",
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
) -> tuple[nn.Module, ClipIdentity]:
    """Build a frozen fp32 CLIP in eval mode and its identity.

    Args:
        name: open_clip architecture name (``ViT-B-16``, ``ViT-B-32``, ``dapt-tiny`` ...).
        pretrained: a pretrained tag (``openai``), a local weights file, ``"tiny-synthetic"`` for the shipped
            tiny weights, or None for random weights.
        quick_gelu: force QuickGELU on or off; None chooses it for OpenAI weights and TorchScript files.
        cache_dir: where downloaded weights are cached.
    """
    _check_name(name)
    if pretrained == "tiny-synthetic":
        pretrained = str(TINY_CLIP_WEIGHTS)
    if pretrained is None:
        use_quick_gelu = _wants_quick_gelu(name, None, quick_gelu)
        # A model kwarg, not force_quick_gelu: that one can only switch QuickGELU on, never off.
        model = open_clip.create_model(name, pretrained=None, quick_gelu=use_quick_gelu)
    elif Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser()
        scripted = is_torchscript_archive(path)
        use_quick_gelu = True if scripted and quick_gelu is None else _wants_quick_gelu(name, None, quick_gelu)
        model = _load_torchscript(path, use_quick_gelu) if scripted else _load_file(name, path, use_quick_gelu)
    elif any(sep in pretrained for sep in ("/", os.sep)) or pretrained.endswith(
        (".pt", ".pth", ".bin", ".safetensors")
    ):
        raise ClipLoadError(f"--model.pretrained: weights file {pretrained} does not exist. Check the path.")
    else:
        use_quick_gelu = _wants_quick_gelu(name, pretrained, quick_gelu)
        model = _load_tag(name, pretrained, use_quick_gelu, cache_dir)
    model = model.float().eval()
    model.requires_grad_(False)
    return model, ClipIdentity(name, pretrained, use_quick_gelu, state_dict_sha256(model))
