"""Whether a method can run on a CLIP: the one place that answers it, from the config alone (before any weights or
data are read) or from the built model (an architecture read from a weights file)."""

from __future__ import annotations

from torch import nn

from dapt_lightning.methods.registry import Method, registered_methods
from dapt_lightning.model.blocks import unsupported_block_reason
from dapt_lightning.model.families import (
    deep_visual_prompt_refusal,
    hugging_face_text_refusal,
    meta_model,
    text_tower_refusal,
    visual_prompt_refusal,
)
from dapt_lightning.model.towers import runs_lean


def usable_methods(clip: nn.Module) -> list[Method]:
    """The registered methods this CLIP's towers can serve."""
    if text_tower_refusal(clip) is not None:
        return []
    visual_ok = visual_prompt_refusal(clip.visual) is None
    deep_ok = deep_visual_prompt_refusal(clip.visual) is None
    attention_ok = attention_adapter_refusal(clip) is None
    return [
        method
        for method in registered_methods()
        if (visual_ok or not method.uses_visual_prompts)
        and (deep_ok or not getattr(method, "deep_visual_prompts", False))
        and (attention_ok or not method.adapts_attention)
    ]


def attention_adapter_refusal(clip: nn.Module) -> str | None:
    """Why LoRA on q/k/v (``model/lora.py``) cannot adapt both towers of ``clip``, or None: it needs open_clip's
    plain attention blocks, which the lean block path computes."""
    tower = getattr(clip, "text", clip)  # a CustomTextCLIP's text tower, or the CLIP itself
    text = getattr(tower, "transformer", None)
    if text is None:
        return "the text tower is not open_clip's own transformer"
    if getattr(tower, "attn_mask", None) is None:
        return "the text tower is bidirectional (its blocks run as open_clip's own)"
    reason = unsupported_block_reason(text, "text")
    if reason is not None:
        return reason
    if getattr(clip.visual, "transformer", None) is None:
        return f"the image tower is a {type(clip.visual).__name__}, without open_clip's attention blocks"
    if not runs_lean(clip.visual):
        return "the image tower's blocks run as open_clip's own (no class-token pooling, or other blocks)"
    return None


def method_refusal(method: Method, clip_name: str, clip: nn.Module | None = None) -> str | None:
    """One line saying why ``method`` cannot run on CLIP ``clip_name`` and which methods can, or None when it can.

    Args:
        method: the method class.
        clip_name: the open_clip architecture (named in the message).
        clip: the built CLIP; None judges from ``clip_name``'s config, built on the meta device (nothing is read).
    """
    hugging_face = hugging_face_text_refusal(clip_name)
    if hugging_face is not None:
        return f"--model.clip_name {clip_name}: {hugging_face}; choose another CLIP."
    clip = clip if clip is not None else meta_model(clip_name)
    if clip is None:
        return None  # an unknown name (the loader says so) or a tower checked once built
    text = text_tower_refusal(clip)
    if text is not None:
        return f"--model.clip_name {clip_name}: {text}; choose another CLIP."
    usable = ", ".join(m.__name__ for m in usable_methods(clip))
    visual = visual_prompt_refusal(clip.visual)
    if method.uses_visual_prompts and visual is not None:
        needs = f"--model {method.__name__} needs visual prompts"
        return f"{needs}, but in {clip_name} {visual}. With {clip_name} use: {usable}."
    deep = deep_visual_prompt_refusal(clip.visual) if getattr(method, "deep_visual_prompts", False) else None
    if deep is not None:
        needs = f"--model {method.__name__} needs deep visual prompts"
        return f"{needs}, but in {clip_name} {deep}. With {clip_name} use: {usable}."
    attention = attention_adapter_refusal(clip) if method.adapts_attention else None
    if attention is not None:
        needs = f"--model {method.__name__} adapts q/k/v of every attention block"
        return f"{needs}, but in {clip_name} {attention}. With {clip_name} use: {usable}."
    return None
