"""Zero-shot CLIP: each class described by a hand-crafted prompt, nothing learned."""

from __future__ import annotations

from typing import Any

from dapt_lightning.methods.base import CLIPMethod


class ZeroShotCLIP(CLIPMethod):
    """Zero-shot CLIP (Radford et al., 2021): classes described by a hand-crafted prompt; it trains nothing.

    Args:
        template: the prompt, ``{}`` standing for the class name; None: the dataset's CoOp template (e.g. ``"a photo
            of a {}, a type of pet."``), or ``"a photo of a {}."`` without one.
    """

    name = "zeroshot"
    title = "zero-shot CLIP"

    def __init__(self, template: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            raise ValueError("ZeroShotCLIP has no prompts to train; evaluate it with `dapt test` instead")
        super().setup(stage)
