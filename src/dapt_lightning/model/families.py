"""Which CLIP towers dapt_lightning can prompt, told from a built model or from an open_clip config alone.

Text towers: open_clip's own ``TextTransformer`` (inline in ``CLIP`` or under ``.text`` in ``CustomTextCLIP``),
causal or not, pooled at the end-of-text token (``argmax``/``eos``) or at a fixed position (``first``/``last``).
Hugging Face text towers and CoCa's appended class token are refused.

Image towers (:data:`ImageFamily`):

* ``vit``: open_clip's ``VisionTransformer`` (OpenAI, LAION, DataComp, CLIPA...);
* ``timm-vit``: timm's ``VisionTransformer`` inside open_clip's ``TimmModel`` (SigLIP, ...), with or without a
  class token;
* ``timm-rope``: timm's ``Eva`` with rotary position embeddings (EVA-02, PE); prompt tokens get the identity
  rotation (no position), the patches their own;
* ``other``: convolutional towers (RN50's ``ModifiedResNet``, ConvNeXt) and every other timm model. These take no
  visual prompts: text-prompt methods only.
"""

from __future__ import annotations

from typing import Literal

import open_clip
import torch
from torch import nn

from dapt_lightning.model.clip import quiet_random_init

ImageFamily = Literal["vit", "timm-vit", "timm-rope", "other"]


def image_tower_family(visual: nn.Module) -> ImageFamily:
    """The family of a built CLIP's image tower (``clip.visual``)."""
    if isinstance(visual, open_clip.transformer.VisionTransformer):
        return "vit"
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:
        from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

        if isinstance(trunk, TimmVisionTransformer):
            return "timm-vit"
        if _is_rope_eva(trunk):
            return "timm-rope"
    return "other"


def _is_rope_eva(trunk: nn.Module) -> bool:
    """timm's ``Eva`` with rotary embeddings applied after its prefix tokens, one rope for every block or per block."""
    from timm.models.eva import Eva

    return isinstance(trunk, Eva) and getattr(trunk, "rope", None) is not None and hasattr(trunk, "num_prefix_tokens")


def visual_prompt_refusal(visual: nn.Module) -> str | None:
    """Why this image tower takes no visual prompts, or None when it does."""
    family = image_tower_family(visual)
    if family != "other":
        return None
    tower = getattr(visual, "trunk", visual)
    kind = f"timm's {type(tower).__name__}" if tower is not visual else f"open_clip's {type(tower).__name__}"
    if not hasattr(tower, "blocks") and not hasattr(tower, "transformer"):
        why = "it is convolutional, with no token sequence to put prompts in"
    else:
        why = "visual prompts go only into open_clip's and timm's VisionTransformer"
    return f"the image tower ({kind}) takes no visual prompts: {why}"


def deep_visual_prompt_refusal(visual: nn.Module) -> str | None:
    """Why this image tower takes no deep prompts (IVLP, MaPLe, PromptSRC: tokens replaced between blocks), or None
    when it does: they go only into open_clip's own ``VisionTransformer``, as in the official code."""
    family = image_tower_family(visual)
    if family == "vit":
        return None
    tower = getattr(visual, "trunk", visual)
    kind = f"timm's {type(tower).__name__}" if tower is not visual else f"open_clip's {type(tower).__name__}"
    return (
        f"the image tower ({kind}) takes no deep visual prompts: they replace tokens between the blocks of open_clip's "
        "own VisionTransformer only"
    )


def text_tower_refusal(clip: nn.Module) -> str | None:
    """Why this CLIP's text tower cannot be used at all, or None when it can."""
    text = getattr(clip, "text", clip)
    if not hasattr(text, "token_embedding") or not hasattr(text, "transformer"):
        return (
            f"its text tower is {type(text).__name__} (a Hugging Face transformer), not open_clip's TextTransformer, "
            "which dapt_lightning needs to place prompt tokens"
        )
    if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
        return "its text tower appends a class token or masks padding (CoCa), which dapt_lightning does not replicate"
    pool_type = getattr(text, "text_pool_type", None) or getattr(text, "pool_type", "argmax")
    if pool_type not in ("argmax", "eos", "first", "last"):
        return f"its text tower pools with {pool_type!r}, not at one token"
    return None


def meta_model(clip_name: str) -> nn.Module | None:
    """Architecture ``clip_name`` built on the meta device (shapes only, nothing allocated), or None when it does not
    build that way (a Hugging Face text tower needs its config from the network) or the name is unknown."""
    if open_clip.get_model_config(clip_name) is None:
        return None  # the loader reports unknown names
    try:
        with quiet_random_init(), torch.device("meta"):
            return open_clip.create_model(clip_name, device="meta")
    except Exception:  # towers that do not build on the meta device are checked once built
        return None


def hugging_face_text_refusal(clip_name: str) -> str | None:
    """Why ``clip_name``'s text tower cannot be prompted, judged from its config: a Hugging Face transformer."""
    config = open_clip.get_model_config(clip_name) or {}
    hf_name = config.get("text_cfg", {}).get("hf_model_name")
    if not hf_name:
        return None
    return (
        f"its text tower is the Hugging Face transformer {hf_name}, not open_clip's TextTransformer, which "
        "dapt_lightning needs to place prompt tokens"
    )
