"""Thin views onto open_clip's text and image towers that expose the steps prompt tuning needs.

They hold references to the frozen CLIP modules (no copies) and re-run open_clip's own sub-modules, so any
open_clip model with the standard CLIP text transformer (causal mask, EOT pooling) and a ViT image tower works.
"""

from __future__ import annotations

from collections.abc import Callable

import open_clip
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dapt_lightning.model.blocks import (
    CastCache,
    block_forward,
    class_token_block_forward,
    is_causal_mask,
    unsupported_block_reason,
)

Tokenizer = Callable[[list[str]], torch.Tensor]
"""Texts -> token ids ``[N, context_length]`` (open_clip's tokenizers)."""


class TextTower(nn.Module):
    """The text transformer of a CLIP, fed with token embeddings instead of token ids, and its tokenizer.

    Args:
        clip: an open_clip CLIP model.
        tokenizer: the CLIP's own tokenizer (``open_clip.get_tokenizer(name)``); None: CLIP's BPE tokenizer at
            the tower's context length.
    """

    def __init__(self, clip: nn.Module, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        text = getattr(clip, "text", clip)  # CustomTextCLIP keeps the tower under .text; CLIP keeps it inline
        for attribute in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
            if not hasattr(text, attribute):
                raise ValueError(
                    f"this CLIP's text tower has no {attribute!r}: only models with the standard CLIP text "
                    "transformer (e.g. ViT-B-16, ViT-L-14) support text prompts; set --model.text_prompts false"
                )
        if (
            getattr(text, "cls_emb", None) is not None
            or getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax")) != "argmax"
        ):
            raise ValueError("this CLIP's text tower does not pool at the EOT token; CoOp prompts need one that does")
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        # Checked once here: reading the mask on a GPU would synchronise every step.
        self.causal = is_causal_mask(text.attn_mask)
        self.tokenizer = tokenizer or open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        self.casts = CastCache()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids ``[N, context_length]`` of ``texts``, with this CLIP's tokenizer."""
        return self.tokenizer(texts)

    def decode(self, token_ids: list[int]) -> str:
        """The text of ``token_ids`` (for reading learned context vectors as their nearest words)."""
        return self.tokenizer.decode(token_ids)

    @property
    def width(self) -> int:
        return self.ln_final.weight.shape[0]

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frozen token embeddings ``[N, L, width]`` of token ids ``[N, L]``."""
        return self.token_embedding(tokens)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Map pooled hidden states to the joint embedding space."""
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection

    @property
    def lean_blocks(self) -> bool:
        """Whether the blocks run lean with causal attention (``model/blocks.py``); else open_clip's transformer."""
        transformer = self.transformer
        return (
            self.causal
            and getattr(transformer, "batch_first", False)
            and not transformer.grad_checkpointing
            and unsupported_block_reason(transformer) is None
        )

    def forward(
        self, embeddings: torch.Tensor, eot_positions: torch.Tensor, checkpointing: bool = False
    ) -> torch.Tensor:
        """Unnormalised text features from prompt embeddings ``[N, L, width]``, pooled at ``eot_positions``.

        ``L`` may be shorter than the context length: the mask is causal, so positions after the EOT cannot
        change the EOT row. ``checkpointing`` recomputes each block in the backward pass instead of storing its
        activations.
        """
        batch, length, width = embeddings.shape
        x = embeddings + self.positional_embedding[:length].to(embeddings.dtype)
        recompute = checkpointing and torch.is_grad_enabled()
        if self.lean_blocks:
            x = x.reshape(-1, width)  # flat tokens: see model/blocks.py
            for block in self.transformer.resblocks:
                if recompute:
                    x = checkpoint(block_forward, block, x, batch, self.casts, True, use_reentrant=False)
                else:
                    x = block_forward(block, x, batch, self.casts, causal=True)
            x = x.reshape(batch, length, width)
        else:
            mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
            if recompute:  # open_clip's own blocks: recompute the whole stack from its input
                x = checkpoint(self.transformer, x, attn_mask=mask, use_reentrant=False)
            else:
                x = self.transformer(x, attn_mask=mask)
        # LayerNorm is per token: normalising only the pooled EOT rows is the same.
        pooled = self.ln_final(x[torch.arange(batch, device=x.device), eot_positions])
        return self.project(pooled)


class ImageTower(nn.Module):
    """The ViT image tower of a CLIP with an optional hook that inserts visual prompt tokens after ``ln_pre``."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        visual = clip.visual
        for attribute in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post"):
            if not hasattr(visual, attribute):
                raise ValueError(
                    f"this CLIP's image tower has no {attribute!r}: visual prompts need a ViT image tower; "
                    "set --model.visual_prompts false or choose a ViT model"
                )
        self.visual = visual
        self.casts = CastCache()

    @property
    def width(self) -> int:
        return self.visual.conv1.weight.shape[0]

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.visual.conv1.weight.shape[-2:])

    @property
    def image_size(self) -> int:
        size = self.visual.image_size
        return size[0] if isinstance(size, tuple | list) else int(size)

    @property
    def computation(self) -> str:
        """Which code computes the features (``lean`` blocks or ``open_clip``'s own): their rounding differs."""
        return "lean" if self.cls_only_last_block else "open_clip"

    @property
    def cls_only_last_block(self) -> bool:
        """Whether the blocks can run lean (``model/blocks.py``) and the last one for the class token alone (exact
        savings, see ``forward``); otherwise open_clip's own transformer runs."""
        visual = self.visual
        return (
            unsupported_block_reason(visual.transformer, "image") is None
            and getattr(visual.transformer, "batch_first", False)
            and not visual.transformer.grad_checkpointing
            and getattr(visual, "attn_pool", None) is None
            and getattr(visual, "pool_type", None) == "tok"
            and not getattr(visual, "final_ln_after_pool", False)
            and not getattr(visual, "output_tokens", False)
        )

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised image features; ``prompts`` ``[P, width]`` go between CLS and the patches.

        Only the class token's output is pooled, so the last block computes attention and MLP for that one query
        (attending to every token) instead of for all of them: the same features with ~1/depth less compute. The
        other blocks run lean, with fewer operators than open_clip's ``nn.MultiheadAttention`` path.
        """
        visual = self.visual
        x = visual._embeds(images)  # conv1, CLS, positional embedding, patch dropout, ln_pre
        if prompts is not None:
            # VPT-shallow: prompts enter after ln_pre, without positional embedding, once before the first block.
            x = torch.cat([x[:, :1], prompts.to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        if not self.cls_only_last_block:
            pooled, _ = visual._pool(visual.transformer(x))
        else:
            blocks = visual.transformer.resblocks
            batch = x.shape[0]
            x = x.reshape(-1, x.shape[-1])  # flat tokens: see model/blocks.py
            for block in blocks[:-1]:
                x = block_forward(block, x, batch, self.casts)
            pooled = visual.ln_post(class_token_block_forward(blocks[-1], x, batch, self.casts))
        return pooled @ visual.proj if visual.proj is not None else pooled
