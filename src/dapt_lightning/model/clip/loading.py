"""Load a frozen CLIP by name and pretrained tag, from a local weights file, or random; and its tokenizer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
from torch import nn

from dapt_lightning.model.clip.errors import ClipLoadError, ClipWeightsUnavailableError, first_line
from dapt_lightning.model.clip.formats import activation_kwargs, build_open_clip, build_openai, is_openai_architecture
from dapt_lightning.model.clip.identity import ClipIdentity, WeightsSource, state_dict_sha256
from dapt_lightning.model.clip.names import TINY_CLIP_NAME, TINY_CLIP_WEIGHTS, check_name, wants_quick_gelu
from dapt_lightning.model.clip.weights_file import clip_weights_layout, read_weights_file


def _load_file(name: str, path: Path, quick_gelu: bool | None) -> tuple[nn.Module, bool, WeightsSource]:
    try:
        weights = read_weights_file(path)
    except ClipLoadError as error:
        raise ClipLoadError(f"--model.pretrained: {error}") from error
    if clip_weights_layout(weights.tensors) is None:
        sample = ", ".join(list(weights.tensors)[:3]) or "no tensors"
        raise ClipLoadError(
            f"--model.pretrained: {path} holds {len(weights.tensors)} tensors ({sample}, ...) but not CLIP weights in "
            "OpenAI's or open_clip's layout. Pass OpenAI's ViT-B-16.pt or a state dict of an open_clip CLIP."
        )
    if is_openai_architecture(name, weights):
        use_quick_gelu = True if quick_gelu is None else quick_gelu  # OpenAI trained with QuickGELU
        source: WeightsSource = "openai-torchscript" if weights.kind.kind == "torchscript" else "openai-state-dict"
        return build_openai(weights, use_quick_gelu), use_quick_gelu, source
    use_quick_gelu = wants_quick_gelu(name, None, quick_gelu)
    return build_open_clip(name, weights, use_quick_gelu), use_quick_gelu, "open_clip-state-dict"


def _weights_sources(name: str, tag: str) -> str:
    """Where the weights of ``name``/``tag`` can be downloaded by hand, for the offline error."""
    config = open_clip.get_pretrained_cfg(name, tag)
    hub = config.get("hf_hub", "").strip("/")
    sources = (
        [f"open_clip_model.safetensors or open_clip_pytorch_model.bin of https://huggingface.co/{hub}"] if hub else []
    )
    sources += [config["url"]] if config.get("url") else []
    return " or ".join(sources) or "see open_clip's pretrained list"


def _load_tag(name: str, tag: str, quick_gelu: bool, cache_dir: str | None) -> nn.Module:
    known_tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in known_tags:
        raise ClipLoadError(
            f"--model.pretrained: {tag!r} is neither a pretrained tag of {name!r} nor an existing file. "
            f"Known tags: {', '.join(known_tags) or 'none'}."
        )
    try:
        return open_clip.create_model(name, pretrained=tag, cache_dir=cache_dir, **activation_kwargs(quick_gelu))
    except Exception as error:
        where = cache_dir or os.environ.get("HF_HUB_CACHE") or os.path.expanduser("~/.cache/huggingface/hub")
        raise ClipWeightsUnavailableError(
            f"Could not load pretrained CLIP weights for model {name!r} with tag {tag!r}: not found in the cache "
            f"({where}) and the download failed ({type(error).__name__}: {error}).\n"
            "Two ways out:\n"
            "  1. run once on a machine with network access (the weights are then cached), optionally with "
            "--model.cache_dir pointing at a shared folder;\n"
            f"  2. copy the weights file here ({_weights_sources(name, tag)}) and pass it: "
            f"--model.clip_name {name} --model.pretrained /path/to/file --model.quick_gelu "
            f"{str(quick_gelu).lower()} (the activation these weights were trained with)."
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
            tiny weights, or None for random weights. A file in OpenAI's layout (TorchScript archive, state dict or
            safetensors) is built as OpenAI's: architecture from its tensors, QuickGELU; one in open_clip's layout
            with ``name``'s config (see :func:`clip_weights_layout` and ``formats.is_openai_architecture``).
        quick_gelu: force QuickGELU on or off; None chooses it for OpenAI weights and from the config otherwise.
        cache_dir: where downloaded weights are cached.
    """
    check_name(name)
    if pretrained == "tiny-synthetic":
        if name != TINY_CLIP_NAME:
            raise ClipLoadError(
                f"--model.pretrained tiny-synthetic holds weights of {TINY_CLIP_NAME!r}, not of {name!r}: "
                f"pass --model.clip_name {TINY_CLIP_NAME}."
            )
        pretrained = str(TINY_CLIP_WEIGHTS)
    source: WeightsSource
    if pretrained is None:
        use_quick_gelu, source = wants_quick_gelu(name, None, quick_gelu), "random"
        # A model kwarg, not force_quick_gelu: that one can only switch QuickGELU on, never off.
        model = open_clip.create_model(name, pretrained=None, quick_gelu=use_quick_gelu)
    elif Path(pretrained).expanduser().is_file():
        model, use_quick_gelu, source = _load_file(name, Path(pretrained).expanduser(), quick_gelu)
    elif any(sep in pretrained for sep in ("/", os.sep)) or pretrained.endswith(
        (".pt", ".pth", ".bin", ".safetensors")
    ):
        raise ClipLoadError(f"--model.pretrained: weights file {pretrained} does not exist. Check the path.")
    else:
        use_quick_gelu, source = wants_quick_gelu(name, pretrained, quick_gelu), "pretrained-tag"
        model = _load_tag(name, pretrained, use_quick_gelu, cache_dir)
    model = model.float().eval()
    model.requires_grad_(False)
    return model, ClipIdentity(name, pretrained, use_quick_gelu, state_dict_sha256(model), source)


def clip_tokenizer(name: str, context_length: int) -> Callable[[list[str]], torch.Tensor]:
    """The tokenizer open_clip pairs with architecture ``name`` (CLIP's BPE, or a Hugging Face tokenizer).

    Raises:
        ClipLoadError: a Hugging Face tokenizer that cannot be loaded here, saying what it needs.
    """
    try:
        return open_clip.get_tokenizer(name, context_length=context_length)
    except Exception as error:  # ImportError without transformers; OSError and others when offline
        hf_name = (open_clip.get_model_config(name) or {}).get("text_cfg", {}).get("hf_tokenizer_name", "?")
        raise ClipLoadError(
            f"--model.clip_name {name}: its tokenizer is the Hugging Face tokenizer {hf_name}, which could not be "
            f"loaded ({first_line(error)}). Install transformers (pip install transformers) and run once with "
            "network access; it is cached for later offline runs."
        ) from error
