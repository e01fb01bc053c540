"""VPT: learned visual tokens inserted once, before the image tower's first block; the class texts stay fixed."""

from __future__ import annotations

from typing import Any

from dapt_lightning.methods.tuning import PromptTuning
from dapt_lightning.model.prompted_clip import GENERIC_TEMPLATE
from dapt_lightning.model.prompts import VisualPromptLearner
from dapt_lightning.model.towers import ImageTower


class VPT(PromptTuning):
    """VPT-shallow (Jia et al., 2022) on CLIP's image tower, trained with cross-entropy.

    Args:
        visual_tokens: number of prompt tokens (16 in DAPT), between the class token and the patches.
        visual_dropout: dropout on the prompt tokens while training.
        template: the class prompt of the fixed text side (``{}`` is the class name).
    """

    name = "vpt"
    title = "VPT"
    uses_visual_prompts = True

    def __init__(
        self, visual_tokens: int = 16, visual_dropout: float = 0.0, template: str = GENERIC_TEMPLATE, **kwargs: Any
    ) -> None:
        if visual_tokens < 1:
            raise ValueError(f"--model.visual_tokens must be >= 1, got {visual_tokens}")
        super().__init__(**kwargs)

    def visual_prompt(self, image_tower: ImageTower) -> VisualPromptLearner:
        return VisualPromptLearner(image_tower, self.hparams.visual_tokens, self.hparams.visual_dropout)
