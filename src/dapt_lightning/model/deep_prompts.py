"""Deep prompts: learned tokens that replace the context at the start of each of the first J blocks of a tower
(IVLP, MaPLe, PromptSRC; ``methods/deep_prompting.py``).

The towers do the replacing (``TextTower.forward``'s and ``ImageTower.deep_forward``'s ``layer_prompts``); these
modules hold what is learned and give one ``[P, width]`` tensor per prompted layer, the first entry being the
input's prompts. Text: the class prompt's context (as CoOp's) for the input, then a fresh context before blocks
1..J-1. Image: tokens appended after the patches before ``ln_pre``, then replacing those same last tokens before
blocks 1..J-1; learned on their own (IVLP) or projected from the text prompts (MaPLe's coupling functions).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from dapt_lightning.model.prompts import TextPromptLearner
from dapt_lightning.model.towers import ImageTower, TextTower

log = logging.getLogger(__name__)

PROMPT_INIT_STD = 0.02
"""The deep prompts' initialisation, ``N(0, 0.02^2)``, as upstream's ``nn.init.normal_(std=0.02)``."""


def _normal_prompts(depth: int, tokens: int, width: int) -> nn.ParameterList:
    return nn.ParameterList(
        [nn.Parameter(torch.empty(tokens, width).normal_(std=PROMPT_INIT_STD)) for _ in range(depth)]
    )


def prompted_blocks(depth: int, blocks: int, tower: str) -> int:
    """How many blocks of a tower of ``blocks`` get prompts for a setting of ``depth``: all of them when it asks for
    more, as upstream does (its blocks take prompts while ``depth > index``), and says so in the log."""
    if depth < 1:
        raise ValueError(f"a prompt depth must be >= 1, got {depth}")
    if depth > blocks:
        log.info(
            "prompt depth %d > the %d blocks of this CLIP's %s tower: prompting all %d", depth, blocks, tower, blocks
        )
    return min(depth, blocks)


class DeepTextPromptLearner(TextPromptLearner):
    """CoOp's class-shared context for the input, and ``depth - 1`` more contexts (``deep_ctx``) replacing the
    context tokens before blocks 1..depth-1.

    Args:
        text_tower, classnames, num_tokens, init_phrase, learned_tokens: as for :class:`TextPromptLearner`.
        depth: the number of prompted blocks (1: the input only, CoOp).
    """

    def __init__(
        self,
        text_tower: TextTower,
        classnames: list[str],
        num_tokens: int,
        init_phrase: str | None,
        depth: int,
        learned_tokens: int | None = None,
    ) -> None:
        super().__init__(text_tower, classnames, num_tokens, init_phrase, learned_tokens=learned_tokens)
        depth = prompted_blocks(depth, len(text_tower.transformer.resblocks), "text")
        self.deep_ctx = _normal_prompts(depth - 1, self.num_tokens, text_tower.width)

    def layer_prompts(self) -> list[torch.Tensor]:
        """The contexts of blocks 1..depth-1 (``TextTower.forward``'s ``layer_prompts``)."""
        return list(self.deep_ctx)


class DeepVisualPrompts(nn.Module):
    """IVLP's visual prompts: ``depth`` independent sets of tokens, ``N(0, 0.02^2)``.

    Args:
        image_tower: the frozen image tower (its width and depth).
        num_tokens: tokens per layer.
        depth: prompted blocks (the input's tokens and ``depth - 1`` replacements).
    """

    def __init__(self, image_tower: ImageTower, num_tokens: int, depth: int) -> None:
        super().__init__()
        depth = prompted_blocks(depth, len(image_tower.visual.transformer.resblocks), "image")
        self.layers = _normal_prompts(depth, num_tokens, image_tower.width)

    def forward(self) -> list[torch.Tensor]:
        """One ``[tokens, width]`` tensor per prompted block (``ImageTower.deep_forward``'s ``layer_prompts``)."""
        return list(self.layers)


class CoupledVisualPrompts(nn.Module):
    """MaPLe's visual prompts: each layer's text context mapped to the image width by its own linear coupling
    function. The input's is ``proj``; the deeper ones start as identical copies of one initialisation, as upstream's
    ``_get_clones``.

    Args:
        text_prompt: the deep text prompts it follows (held, not registered: they are the text side's state).
        image_tower: the frozen image tower (its width).
    """

    def __init__(self, text_prompt: DeepTextPromptLearner, image_tower: ImageTower) -> None:
        super().__init__()
        depth = prompted_blocks(len(text_prompt.deep_ctx) + 1, len(image_tower.visual.transformer.resblocks), "image")
        text_width, image_width = text_prompt.txt_ctx.shape[-1], image_tower.width
        self._text = (text_prompt,)  # a tuple: not a registered sub-module, so not saved twice
        self.proj = nn.Linear(text_width, image_width)
        layer = nn.Linear(text_width, image_width)
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(depth - 1)])

    def forward(self) -> list[torch.Tensor]:
        """The input's and each deeper block's visual prompts ``[tokens, image width]``."""
        text = self._text[0]
        return [self.proj(text.txt_ctx)] + [
            projection(context) for projection, context in zip(self.layers, text.deep_ctx, strict=False)
        ]
