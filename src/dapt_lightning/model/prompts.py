"""CoOp text prompts and VPT-shallow visual prompts: plain nn.Modules holding the only trained parameters."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from dapt_lightning.model.towers import ImageTower, TextTower


def prompt_texts(classnames: list[str], prefix: str) -> list[str]:
    """CoOp prompt strings: ``"{prefix} {name}."`` with ``_`` in class names replaced by spaces."""
    return [f"{prefix} {name.replace('_', ' ')}." for name in classnames]


def context_slot(tokenizer_tokens: Callable[[list[str]], torch.Tensor], phrase: str) -> tuple[int, int]:
    """Where a phrase's tokens sit in its tokenization: ``(start, count)``, read from the tokenizer itself.

    The tokens that ``phrase`` and the empty text share at the start are the tokenizer's leading special tokens
    (CLIP's start-of-text; none for SigLIP's); the phrase's own tokens follow, then the same ending as the empty
    text's (end of text, padding). So the learned context goes where the tokenizer puts the first words.
    """
    empty, tokens = tokenizer_tokens(["", phrase])
    start = 0
    while start < len(tokens) and tokens[start] == empty[start]:
        start += 1
    for count in range(1, len(tokens) - start + 1):
        if torch.equal(tokens[start + count :], empty[start : len(tokens) - count]):
            return start, count
    raise ValueError(f"cannot find the tokens of {phrase!r} in its tokenization: is the tokenizer deterministic?")


class TextPromptLearner(nn.Module):
    """Learnable context vectors in place of the first words of every class prompt (CoOp).

    The prompt is ``"{context} {class name}."``, laid out by the CLIP's own tokenizer: the context replaces the
    tokens of its words, after any leading special token (CLIP's start-of-text), and the features are read where the
    tower pools (``TextTower.pool_positions``).

    Args:
        text_tower: the frozen text tower (its tokenizer and frozen token embeddings).
        classnames: one name per label.
        num_tokens: context length when ``init_phrase`` is None (16 in DAPT).
        init_phrase: initialise the context from the embeddings of this phrase (e.g. ``"a photo of a"``);
            the context length is then the phrase's token count.
        class_specific: one context per class instead of one shared by all classes (CoOp's CSC).
        learned_tokens: learn only the first this many tokens of ``init_phrase``; its other words stay fixed words
            of every prompt (MaPLe's 2 learned tokens of "a photo of a"). None: all of them.
    """

    def __init__(
        self,
        text_tower: TextTower,
        classnames: list[str],
        num_tokens: int = 16,
        init_phrase: str | None = None,
        class_specific: bool = False,
        learned_tokens: int | None = None,
    ) -> None:
        super().__init__()
        prefix = init_phrase or " ".join(["X"] * num_tokens)
        start, count = context_slot(text_tower.tokenize, prefix)
        if init_phrase:
            if learned_tokens is not None and not 1 <= learned_tokens <= count:
                raise ValueError(f"{learned_tokens} learned tokens of {init_phrase!r}, which has {count}")
            num_tokens = learned_tokens or count
            with torch.no_grad():
                phrase_tokens = text_tower.tokenize([init_phrase])
                init = text_tower.embed_tokens(phrase_tokens)[0, start : start + num_tokens].clone().float()
        else:
            if count != num_tokens:
                raise ValueError(
                    f"this CLIP's tokenizer makes {count} tokens of {num_tokens} placeholder words: set "
                    "--model.text_init to a phrase instead of --model.text_tokens"
                )
            init = torch.empty(num_tokens, text_tower.width).normal_(std=0.02)
        if class_specific:
            init = init.expand(len(classnames), -1, -1).clone()
            if not init_phrase:
                init.normal_(std=0.02)
        self.txt_ctx = nn.Parameter(init)
        self.num_tokens = num_tokens
        self.context_start = start
        self.class_specific = class_specific
        self.prefix_text = prefix

        tokens = text_tower.tokenize(prompt_texts(classnames, prefix))
        padding = text_tower.tokenize([""])[0, -1]
        too_long = [name for name, row in zip(classnames, tokens, strict=True) if row[-1] != padding]
        if too_long:
            raise ValueError(f"class names too long for the {text_tower.context_length}-token context: {too_long[:3]}")
        context_ids = text_tower.tokenize([prefix])[0, start : start + num_tokens]
        moved = [
            name
            for name, row in zip(classnames, tokens, strict=True)
            if not torch.equal(row[start : start + num_tokens], context_ids)
        ]
        if moved:
            raise ValueError(f"the tokenizer splits the prompt differently before class names such as {moved[:3]}")
        with torch.no_grad():
            embeddings = text_tower.embed_tokens(tokens).float()
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("pool_positions", text_tower.pool_positions(tokens), persistent=False)
        self.register_buffer("token_prefix", embeddings[:, :start], persistent=False)  # SOT, if any
        self.register_buffer("token_suffix", embeddings[:, start + num_tokens :], persistent=False)  # name, '.', end

    def forward(self, length: int | None = None) -> torch.Tensor:
        """Prompt embeddings ``[C, length, width]``; ``length`` cuts every sequence (None: full context)."""
        num_classes = self.token_prefix.shape[0]
        ctx = self.txt_ctx if self.class_specific else self.txt_ctx.expand(num_classes, -1, -1)
        kept = None if length is None else length - self.context_start - self.num_tokens
        suffix = self.token_suffix if kept is None else self.token_suffix[:, :kept]
        return torch.cat([self.token_prefix.to(ctx.dtype), ctx, suffix.to(ctx.dtype)], dim=1)


class VisualPromptLearner(nn.Module):
    """VPT-shallow prompt tokens, inserted once between CLS and the patch tokens."""

    def __init__(self, image_tower: ImageTower, num_tokens: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        patch_h, patch_w = image_tower.patch_size
        # VPT's Xavier-style bound: sqrt(6 / (3 * patch area + width)); 0.0625 for ViT-B/16.
        bound = math.sqrt(6.0 / (3 * patch_h * patch_w + image_tower.width))
        self.vis_ctx = nn.Parameter(torch.empty(num_tokens, image_tower.width).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> torch.Tensor:
        """The prompt tokens ``[num_tokens, width]`` (after dropout in training)."""
        return self.dropout(self.vis_ctx)
