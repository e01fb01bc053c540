"""CoOp: a learned text context in place of the prompt's words, shared by every class or one per class."""

from __future__ import annotations

from typing import Any

from dapt_lightning.methods.tuning import PromptTuning
from dapt_lightning.model.prompts import TextPromptLearner
from dapt_lightning.model.shared_prefix import SharedPrefixLayout
from dapt_lightning.model.towers import TextTower


class CoOp(PromptTuning):
    """CoOp (Zhou et al., 2022): learned context vectors before each class name, trained with cross-entropy.

    Args:
        text_tokens: context length (16 in DAPT), initialised ``N(0, 0.02^2)``.
        text_init: initialise the context from this phrase's embeddings instead (``"a photo of a"``); the context
            length is then the phrase's token count.
        class_specific_context: one context per class (CoOp's CSC) instead of one shared by all classes.
        text_layout: how the shared-prefix text encoding packs class suffixes: ``auto``, ``per_length``,
            ``single_attention``, ``two_buckets`` (or a token budget).
        text_checkpointing: recompute text-tower activations in the backward pass (less memory, more time).
    """

    name = "coop"
    title = "CoOp"
    uses_text_prompts = True

    def __init__(
        self,
        text_tokens: int = 16,
        text_init: str | None = None,
        class_specific_context: bool = False,
        text_layout: SharedPrefixLayout | int = "auto",
        text_checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        if text_tokens < 1:
            raise ValueError(f"--model.text_tokens must be >= 1, got {text_tokens}")
        super().__init__(**kwargs)

    def text_encoding_options(self) -> dict[str, Any]:
        return {"layout": self.hparams.text_layout, "checkpointing": self.hparams.text_checkpointing}

    def text_prompt(self, text_tower: TextTower, classnames: list[str]) -> TextPromptLearner:
        settings = self.hparams
        return TextPromptLearner(
            text_tower, classnames, settings.text_tokens, settings.text_init, settings.class_specific_context
        )
