"""The methods one PromptedCLIP serves, and what each switches on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Method = Literal["zeroshot", "coop", "vpt", "coop_vpt", "dapt"]


@dataclass(frozen=True)
class MethodSpec:
    """Which prompts a method learns and whether it uses DAPT's dispersion losses."""

    text_prompts: bool
    visual_prompts: bool
    dispersion_losses: bool


METHODS: dict[str, MethodSpec] = {
    "zeroshot": MethodSpec(text_prompts=False, visual_prompts=False, dispersion_losses=False),
    "coop": MethodSpec(text_prompts=True, visual_prompts=False, dispersion_losses=False),
    "vpt": MethodSpec(text_prompts=False, visual_prompts=True, dispersion_losses=False),
    "coop_vpt": MethodSpec(text_prompts=True, visual_prompts=True, dispersion_losses=False),
    "dapt": MethodSpec(text_prompts=True, visual_prompts=True, dispersion_losses=True),
}


def method_spec(method: str) -> MethodSpec:
    """The spec of ``method``, or an error listing the known methods."""
    if method not in METHODS:
        raise ValueError(f"--model.method: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method]
