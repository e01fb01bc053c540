"""Deep multimodal prompts (``model/deep_prompts.py``): IVLP's independent text and visual prompts and MaPLe's
visual prompts coupled to the text ones, both in the first J blocks of each tower.

Upstream (muzairkhattak/multimodal-prompt-learning, muzairkhattak/PromptSRC) learns the text context as CoOp does
when the context is at most as long as its init phrase: the phrase's first ``text_tokens`` tokens are learned and
its other words stay in every prompt ("a photo" learned, "of a {class}." fixed for MaPLe's 2 tokens); a longer
context starts from ``N(0, 0.02^2)`` with placeholder words.
"""

from __future__ import annotations

from typing import Any

from dapt_lightning.methods.tuning import PromptTuning
from dapt_lightning.model.deep_prompts import (
    CoupledVisualPrompts,
    DeepTextPromptLearner,
    DeepVisualPrompts,
)
from dapt_lightning.model.prompts import context_slot
from dapt_lightning.model.towers import ImageTower, TextTower


def deep_text_prompt(
    text_tower: TextTower, classnames: list[str], tokens: int, init: str | None, depth: int
) -> DeepTextPromptLearner:
    """Upstream's text prompts: the first ``tokens`` tokens of ``init`` learned (when it has that many), else a
    random context of ``tokens`` placeholder words; ``depth`` prompted blocks."""
    phrase_tokens = context_slot(text_tower.tokenize, init)[1] if init else 0
    if init and tokens <= phrase_tokens:
        return DeepTextPromptLearner(text_tower, classnames, tokens, init, depth, learned_tokens=tokens)
    return DeepTextPromptLearner(text_tower, classnames, tokens, None, depth)


def at_least_one(**settings: int) -> None:
    """Refuse a token count or depth below 1, naming the setting (the towers' own depth is checked when built)."""
    for name, value in settings.items():
        if value < 1:
            raise ValueError(f"--model.{name} must be >= 1, got {value}")


class DeepPromptTuning(PromptTuning):
    """What IVLP and MaPLe share: learned prompts in the first blocks of both towers (the image tower must take deep
    prompts), and text-tower checkpointing as an option (``text_checkpointing``, a setting of each subclass)."""

    uses_text_prompts = True
    uses_visual_prompts = True
    deep_visual_prompts = True

    def text_encoding_options(self) -> dict[str, Any]:
        return {"checkpointing": self.hparams.text_checkpointing}


class IVLP(DeepPromptTuning):
    """Independent vision-language prompting: deep text prompts and deep visual prompts, learned separately, trained
    with cross-entropy. The defaults are PromptSRC's IVLP (``configs/trainers/IVLP/vit_b16_c2_ep20_batch4_4+4ctx``:
    4+4 tokens, depth 9, SGD 2.5e-3, batch 4, 20 epochs; the MaPLe paper's is 2+2 tokens at depth 12, 3.5e-3, 5
    epochs).

    Args:
        text_tokens: learned text tokens per layer.
        visual_tokens: learned visual tokens per layer.
        text_depth: prompted text blocks (1: the input only).
        visual_depth: prompted image blocks (1: VPT-shallow, appended before ``ln_pre``).
        text_init: the phrase the input's text context starts from (see the module's docstring).
        text_checkpointing: recompute text-tower activations in the backward pass (less memory, more time).
    """

    name = "ivlp"
    title = "IVLP"

    def __init__(
        self,
        text_tokens: int = 4,
        visual_tokens: int = 4,
        text_depth: int = 9,
        visual_depth: int = 9,
        text_init: str | None = "a photo of a",
        text_checkpointing: bool = False,
        lr: float = 0.0025,
        **kwargs: Any,
    ) -> None:
        at_least_one(
            text_tokens=text_tokens, visual_tokens=visual_tokens, text_depth=text_depth, visual_depth=visual_depth
        )
        super().__init__(lr=lr, **kwargs)

    def text_prompt(self, text_tower: TextTower, classnames: list[str]) -> DeepTextPromptLearner:
        settings = self.hparams
        return deep_text_prompt(text_tower, classnames, settings.text_tokens, settings.text_init, settings.text_depth)

    def visual_prompt(self, image_tower: ImageTower) -> DeepVisualPrompts:
        return DeepVisualPrompts(image_tower, self.hparams.visual_tokens, self.hparams.visual_depth)


class MaPLe(DeepPromptTuning):
    """Multi-modal prompt learning (Khattak et al., CVPR 2023): deep text prompts, and visual prompts projected from
    them by one linear coupling function per layer, trained with cross-entropy. The defaults are the official
    ``configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``: 2 tokens from "a photo of a", depth 9, SGD 3.5e-3,
    batch 4, 5 epochs (``configs/methods/maple.yaml``).

    Args:
        text_tokens: learned tokens per layer (text and image alike).
        depth: prompted blocks of both towers (1: shallow MaPLe).
        text_init: the phrase the input's text context starts from (see the module's docstring).
        text_checkpointing: recompute text-tower activations in the backward pass (less memory, more time).
    """

    name = "maple"
    title = "MaPLe"

    def __init__(
        self,
        text_tokens: int = 2,
        depth: int = 9,
        text_init: str | None = "a photo of a",
        text_checkpointing: bool = False,
        lr: float = 0.0035,
        **kwargs: Any,
    ) -> None:
        at_least_one(text_tokens=text_tokens, depth=depth)
        super().__init__(lr=lr, **kwargs)
        # The text prompts the visual ones follow, in a tuple: an nn.Module attribute would be registered (and
        # saved) a second time under this method.
        self._coupled_text: tuple[DeepTextPromptLearner, ...] = ()

    def text_prompt(self, text_tower: TextTower, classnames: list[str]) -> DeepTextPromptLearner:
        settings = self.hparams
        # build_model asks for the text prompts first; the visual ones are projected from these.
        text = deep_text_prompt(text_tower, classnames, settings.text_tokens, settings.text_init, settings.depth)
        self._coupled_text = (text,)
        return text

    def visual_prompt(self, image_tower: ImageTower) -> CoupledVisualPrompts:
        return CoupledVisualPrompts(self._coupled_text[0], image_tower)
