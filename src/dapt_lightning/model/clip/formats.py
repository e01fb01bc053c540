"""OpenAI's format or open_clip's: which architecture a file's tensors are built as, and building it exactly.

OpenAI's layout is also open_clip's for the models both have, so the tensors alone cannot always tell them apart:
the architecture named by ``--model.clip_name`` decides (``is_openai_architecture``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import nn

from dapt_lightning.model.clip.errors import ClipLoadError, first_line
from dapt_lightning.model.clip.weights_file import WeightsFile, clip_weights_layout


def activation_kwargs(quick_gelu: bool) -> dict[str, bool]:
    """open_clip.create_model's keyword for QuickGELU on or off."""
    # force_quick_gelu sets the config's own flag, so open_clip's check against the tag's flag sees it (a model kwarg
    # would warn of a mismatch that is not there); it can only switch QuickGELU on, so off is a model kwarg.
    return {"force_quick_gelu": True} if quick_gelu else {"quick_gelu": False}


def openai_image_size(tensors: Mapping[str, torch.Tensor]) -> int:
    """The input size OpenAI's builder gives these tensors."""
    # As open_clip's build_model_from_openai_state_dict: the position grid times the patch (ViT) or 32 (ResNet).
    if "visual.proj" in tensors:
        grid = round((tensors["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        return grid * tensors["visual.conv1.weight"].shape[-1]
    return round((tensors["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5) * 32


def _follows_openai_rules(name: str) -> bool:
    """Whether OpenAI's builder, which sees only tensor shapes, would build architecture ``name`` exactly.

    It derives every size from the tensors and takes open_clip's defaults for the rest: 64-wide attention heads,
    no layer scale, argmax pooling... A config that sets any of these otherwise (``dapt-tiny``'s 32-wide heads) is
    not OpenAI's architecture, and neither is a config with more than the two towers and the embedding width.
    """
    config = open_clip.get_model_config(name)
    if set(config) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}:
        return False
    try:
        vision = CLIPVisionCfg(**config["vision_cfg"])
        text = CLIPTextCfg(**config["text_cfg"])
    except TypeError:  # keys of timm or Hugging Face towers
        return False
    openai_vision = CLIPVisionCfg(
        layers=vision.layers, width=vision.width, patch_size=vision.patch_size, image_size=vision.image_size
    )
    openai_text = CLIPTextCfg(
        context_length=text.context_length,
        vocab_size=text.vocab_size,
        width=text.width,
        heads=text.width // 64,
        layers=text.layers,
    )
    return vision == openai_vision and text == openai_text


def _fits(name: str, tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``tensors`` have exactly the names and shapes of architecture ``name``'s state dict."""
    try:
        with quiet_random_init(), torch.device("meta"):  # shapes only: nothing is allocated or initialised
            expected = open_clip.create_model(name, device="meta").state_dict()
    except Exception:  # towers from timm or Hugging Face may not build on the meta device; those are no fit
        return False
    return set(expected) == set(tensors) and all(expected[k].shape == tensors[k].shape for k in expected)


def is_openai_architecture(name: str, weights: WeightsFile) -> bool:
    """Whether a state dict is to be built as OpenAI's (architecture from the tensors, QuickGELU).

    OpenAI's layout is also open_clip's for the models both have, so the layout alone cannot tell OpenAI's weights
    from open_clip's. The named config decides: weights that fit an architecture OpenAI's builder cannot make
    (other head widths, ...) are open_clip's for that config; all others in OpenAI's layout are taken as OpenAI's.
    """
    if weights.kind.kind == "torchscript":
        return True
    if weights.training_checkpoint or clip_weights_layout(weights.tensors) != "openai":
        return False
    return _follows_openai_rules(name) or not _fits(name, weights.tensors)


@contextmanager
def quiet_random_init() -> Iterator[None]:
    """Drop open_clip's "Model initialized randomly" line while building a model whose weights are loaded next.

    open_clip logs it whenever ``create_model`` itself loads nothing; here it would be false.
    """

    def keep(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _load_exactly(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    model = model.float()
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return model


def build_openai(weights: WeightsFile, quick_gelu: bool) -> nn.Module:
    """OpenAI's architecture from the file's tensors, with exactly its weights (fp32)."""
    try:
        # cast_dtype None: open_clip's plain LayerNorm, as create_model builds; the builder still rounds the
        # weights it loads to fp16, so the exact values are loaded again.
        model = open_clip.model.build_model_from_openai_state_dict(
            dict(weights.tensors), quick_gelu=quick_gelu, cast_dtype=None
        )
        return _load_exactly(model, weights.tensors)
    except (KeyError, IndexError, RuntimeError, ValueError) as error:
        raise ClipLoadError(
            f"--model.pretrained: {weights.path} has OpenAI's key layout, but its tensors do not make a CLIP "
            f"({first_line(error)}). Check the file."
        ) from error


def build_open_clip(name: str, weights: WeightsFile, quick_gelu: bool) -> nn.Module:
    """Architecture ``name`` with exactly the file's weights (fp32)."""
    with quiet_random_init():
        model = open_clip.create_model(name, pretrained=None, **activation_kwargs(quick_gelu))
    tensors = weights.tensors
    if "positional_embedding" in tensors and not hasattr(model, "positional_embedding"):
        tensors = open_clip.model.convert_to_custom_text_state_dict(tensors)  # OpenAI's layout into text.*
    try:
        return _load_exactly(model, tensors)
    except RuntimeError as error:
        raise ClipLoadError(
            f"--model.pretrained: the weights in {weights.path} do not fit the architecture {name!r} "
            f"({first_line(error)}). Set --model.clip_name to the architecture the file was saved from."
        ) from error
