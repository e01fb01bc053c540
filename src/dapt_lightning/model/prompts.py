"""CoOp text prompts and VPT-shallow visual prompts: plain nn.Modules holding the only trained parameters."""

from __future__ import annotations

import math

import torch
from torch import nn

from dapt_lightning.model.towers import ImageTower, TextTower


def prompt_texts(classnames: list[str], prefix: str) -> list[str]:
    """CoOp prompt strings: ``"{prefix} {name}."`` with ``_`` in class names replaced by spaces."""
    return [f"{prefix} {name.replace('_', ' ')}." for name in classnames]


class TextPromptLearner(nn.Module):
    """Learnable context vectors that replace the placeholder tokens after SOT (CoOp).

    Args:
        text_tower: the frozen text tower (its tokenizer and frozen token embeddings).
        classnames: one name per label.
        num_tokens: context length when ``init_phrase`` is None (16 in DAPT).
        init_phrase: initialise the context from the embeddings of this phrase (e.g. ``"a photo of a"``);
            the context length is then the phrase's token count.
        class_specific: one context per class instead of one shared by all classes (CoOp's CSC).
    """

    def __init__(
        self,
        text_tower: TextTower,
        classnames: list[str],
        num_tokens: int = 16,
        init_phrase: str | None = None,
        class_specific: bool = False,
    ) -> None:
        super().__init__()
        if init_phrase:
            phrase_tokens = text_tower.tokenize([init_phrase])[0]
            num_tokens = int(phrase_tokens.argmax()) - 1
            with torch.no_grad():
                init = text_tower.embed_tokens(phrase_tokens[None])[0, 1 : 1 + num_tokens].clone().float()
            prefix = init_phrase
        else:
            init = torch.empty(num_tokens, text_tower.width).normal_(std=0.02)
            prefix = " ".join(["X"] * num_tokens)
        if class_specific:
            init = init.expand(len(classnames), -1, -1).clone()
            if not init_phrase:
                init.normal_(std=0.02)
        self.txt_ctx = nn.Parameter(init)
        self.num_tokens = num_tokens
        self.class_specific = class_specific
        self.prefix_text = prefix

        tokens = text_tower.tokenize(prompt_texts(classnames, prefix))
        too_long = [name for name, row in zip(classnames, tokens, strict=True) if row[-1] != 0]
        if too_long:
            raise ValueError(f"class names too long for the {text_tower.context_length}-token context: {too_long[:3]}")
        with torch.no_grad():
            embeddings = text_tower.embed_tokens(tokens).float()
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", embeddings[:, :1], persistent=False)  # SOT
        self.register_buffer("token_suffix", embeddings[:, 1 + num_tokens :], persistent=False)  # name, '.', EOT, pad

    @property
    def eot_positions(self) -> torch.Tensor:
        """Index of the EOT token (the largest id) in each class's sequence."""
        return self.tokens.argmax(dim=-1)

    def forward(self, length: int | None = None) -> torch.Tensor:
        """Prompt embeddings ``[C, length, width]``; ``length`` cuts every sequence (None: full context)."""
        num_classes = self.token_prefix.shape[0]
        ctx = self.txt_ctx if self.class_specific else self.txt_ctx.expand(num_classes, -1, -1)
        suffix = self.token_suffix if length is None else self.token_suffix[:, : length - 1 - self.num_tokens]
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
