"""CoOp+VPT: a learned text context and learned visual tokens, trained with cross-entropy (DAPT without its
dispersion losses)."""

from __future__ import annotations

from typing import Any

from dapt_lightning.methods.coop import CoOp
from dapt_lightning.model.prompts import VisualPromptLearner
from dapt_lightning.model.towers import ImageTower


class CoOpVPT(CoOp):
    """CoOp's text context and VPT-shallow's visual tokens together, trained with cross-entropy.

    Args:
        visual_tokens: number of visual prompt tokens (16 in DAPT), between the class token and the patches.
        visual_dropout: dropout on the visual prompt tokens while training.
    """

    name = "coop_vpt"
    title = "CoOp+VPT"
    uses_visual_prompts = True

    def __init__(self, visual_tokens: int = 16, visual_dropout: float = 0.0, **kwargs: Any) -> None:
        if visual_tokens < 1:
            raise ValueError(f"--model.visual_tokens must be >= 1, got {visual_tokens}")
        super().__init__(**kwargs)

    def visual_prompt(self, image_tower: ImageTower) -> VisualPromptLearner:
        return VisualPromptLearner(image_tower, self.hparams.visual_tokens, self.hparams.visual_dropout)
