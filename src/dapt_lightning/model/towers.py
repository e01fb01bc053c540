"""Thin views onto open_clip's text and image towers that expose the steps prompt tuning needs.

They hold references to the frozen CLIP modules (no copies) and re-run open_clip's (and timm's) own sub-modules.
Which towers they serve, and how, is in ``model/families.py``.
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
from dapt_lightning.model.families import ImageFamily, image_tower_family, text_tower_refusal, visual_prompt_refusal

Tokenizer = Callable[[list[str]], torch.Tensor]
"""Texts -> token ids ``[N, context_length]`` (open_clip's tokenizers)."""


class TextTower(nn.Module):
    """The text transformer of a CLIP, fed with token embeddings instead of token ids, and its tokenizer.

    Any open_clip ``TextTransformer`` (``model/families.py``): causal or bidirectional, pooled where the tower pools
    (the end-of-text token for ``argmax``/``eos``, a fixed position for ``first``/``last``).

    Args:
        clip: an open_clip CLIP model.
        tokenizer: the CLIP's own tokenizer (``open_clip.get_tokenizer(name)``); None: CLIP's BPE tokenizer at
            the tower's context length.
    """

    def __init__(self, clip: nn.Module, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        refusal = text_tower_refusal(clip)
        if refusal is not None:
            raise ValueError(f"this CLIP cannot be prompted: {refusal}")
        text = getattr(clip, "text", clip)  # CustomTextCLIP keeps the tower under .text; CLIP keeps it inline
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)  # None: bidirectional
        # Checked once here: reading the mask on a GPU would synchronise every step.
        self.causal = text.attn_mask is not None and is_causal_mask(text.attn_mask)
        # CLIP keeps the pooling rule as text_pool_type/text_eos_id, TextTransformer as pool_type/eos_id.
        self.pool_type: str = getattr(text, "text_pool_type", None) or text.pool_type
        self.eos_id: int | None = getattr(text, "text_eos_id", getattr(text, "eos_id", None))
        self.tokenizer = tokenizer or open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        self.casts = CastCache()

    @property
    def pools_at_end_of_text(self) -> bool:
        """Whether the features are read at each prompt's end-of-text token behind a causal mask: then no later
        token can change them, and prompts may be cut after it (the fast text paths)."""
        return self.causal and self.pool_type in ("argmax", "eos")

    def pool_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Where the tower reads each prompt's features from, given its token ids ``[N, L]`` (as open_clip's
        ``text_global_pool``): the highest id (``argmax``), the first ``eos_id`` (``eos``), or position 0 / L-1."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        position = 0 if self.pool_type == "first" else tokens.shape[-1] - 1
        return torch.full(tokens.shape[:1], position, dtype=torch.long, device=tokens.device)

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

    @property
    def output_dim(self) -> int:
        """The joint embedding width (the text projection's output)."""
        if self.text_projection is None:
            return self.width
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection.out_features
        return self.text_projection.shape[1]

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Map pooled hidden states to the joint embedding space."""
        if self.text_projection is None:
            return pooled
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
        self, embeddings: torch.Tensor, pool_positions: torch.Tensor, checkpointing: bool = False
    ) -> torch.Tensor:
        """Unnormalised text features from prompt embeddings ``[N, L, width]``, pooled at ``pool_positions``.

        ``L`` may be shorter than the context length only where :attr:`pools_at_end_of_text`: then positions
        after the end of text cannot change its row. ``checkpointing`` recomputes each block in the backward pass
        instead of storing its activations.
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
        # LayerNorm is per token: normalising only the pooled rows is the same.
        pooled = self.ln_final(x[torch.arange(batch, device=x.device), pool_positions])
        return self.project(pooled)


class ImageTower(nn.Module):
    """The image tower of a CLIP, with visual prompt tokens where its family takes them (``model/families.py``).

    Prompts go after the tower's prefix tokens (the class token, and timm's register tokens; first when there are
    none), without positional embedding, before the first block (VPT-shallow). They act through attention only: the
    pooling (class token, average or attention pool) reads the same tokens it reads without prompts.
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.visual = clip.visual
        self.family: ImageFamily = image_tower_family(self.visual)
        # Why this tower takes no visual prompts (None when it does): fixed by the tower, so judged once, not per step.
        self.prompt_refusal: str | None = visual_prompt_refusal(self.visual)
        self.casts = CastCache()

    @property
    def width(self) -> int:
        if self.family in ("timm-vit", "timm-rope"):
            return self.visual.trunk.embed_dim
        return self.visual.conv1.weight.shape[0]

    @property
    def patch_size(self) -> tuple[int, int]:
        if self.family in ("timm-vit", "timm-rope"):
            return tuple(self.visual.trunk.patch_embed.patch_size)
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
        return self.family == "vit" and runs_lean(self.visual)

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised image features; ``prompts`` ``[P, width]`` go after the prefix tokens.

        Where only the class token's output is pooled, the last block computes attention and MLP for that one query
        (attending to every token) instead of for all of them: the same features with ~1/depth less compute. The
        other blocks run lean, with fewer operators than open_clip's ``nn.MultiheadAttention`` path.
        """
        if prompts is not None and self.prompt_refusal is not None:
            raise ValueError(f"in this CLIP {self.prompt_refusal}")
        if self.family == "timm-vit":
            return self._timm_forward(images, prompts)
        if self.family == "timm-rope":
            return self._rope_forward(images, prompts)
        if self.family == "other":
            return self.visual(images)  # open_clip's own forward: nothing is inserted
        visual = self.visual
        x = visual._embeds(images)  # conv1, CLS, positional embedding, patch dropout, ln_pre
        if prompts is not None:
            x = _insert(x, prompts, 1)
        if not self.cls_only_last_block:
            x = visual.transformer(x)
            pooled, _ = visual._pool(x if prompts is None else _remove(x, len(prompts), 1))
        else:
            blocks = visual.transformer.resblocks
            batch = x.shape[0]
            x = x.reshape(-1, x.shape[-1])  # flat tokens: see model/blocks.py
            for block in blocks[:-1]:
                x = block_forward(block, x, batch, self.casts)
            pooled = visual.ln_post(class_token_block_forward(blocks[-1], x, batch, self.casts))
        return pooled @ visual.proj if visual.proj is not None else pooled

    def _timm_forward(self, images: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        """timm's ``VisionTransformer.forward_features`` and ``forward_head``, then open_clip's head, with prompts
        between the prefix tokens and the patches."""
        trunk = self.visual.trunk
        if prompts is None:
            return self.visual(images)
        prefix = trunk.num_prefix_tokens
        x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(images))))
        x = trunk.norm(trunk.blocks(_insert(x, prompts, prefix)))
        return self.visual.head(trunk.forward_head(_remove(x, len(prompts), prefix)))

    def _rope_forward(self, images: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        """timm's ``Eva.forward_features`` and ``forward_head``, then open_clip's head, with prompts after the prefix
        tokens. The rotary embedding covers the tokens after the prefix; the prompts' rows are the identity rotation
        (sine 0, cosine 1), so they carry no position and the patches keep theirs."""
        trunk = self.visual.trunk
        if prompts is None:
            return self.visual(images)
        prefix = trunk.num_prefix_tokens
        x, rope = trunk._pos_embed(trunk.patch_embed(images))
        x = _insert(trunk.norm_pre(x), prompts, prefix)
        rope = _identity_rows_first(rope, len(prompts))
        mixed = getattr(trunk, "rope_mixed", False)
        for index, block in enumerate(trunk.blocks):
            x = block(x, rope=rope[index] if mixed else rope)
        x = trunk.norm(x)
        return self.visual.head(trunk.forward_head(_remove(x, len(prompts), prefix)))


def _identity_rows_first(rope: torch.Tensor, count: int) -> torch.Tensor:
    """A timm rotary embedding (``[..., tokens, 2 * dim]``: sines then cosines) with ``count`` identity rows (sine 0,
    cosine 1) before its first token."""
    half = rope.shape[-1] // 2
    identity = torch.cat([rope.new_zeros(half), rope.new_ones(half)]).expand(*rope.shape[:-2], count, rope.shape[-1])
    return torch.cat([identity, rope], dim=-2)


def _insert(tokens: torch.Tensor, prompts: torch.Tensor, position: int) -> torch.Tensor:
    """``tokens`` ``[B, N, W]`` with ``prompts`` ``[P, W]`` inserted at ``position`` in every sequence."""
    prompts = prompts.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
    return torch.cat([tokens[:, :position], prompts, tokens[:, position:]], dim=1)


def _remove(tokens: torch.Tensor, count: int, position: int) -> torch.Tensor:
    """``tokens`` without the ``count`` tokens at ``position`` (the prompts' outputs, which no pooling reads)."""
    return torch.cat([tokens[:, :position], tokens[:, position + count :]], dim=1)


def runs_lean(visual: nn.Module) -> bool:
    """Whether an open_clip ``VisionTransformer`` runs in the lean block path, its last block for the class token
    alone: plain blocks, batch-first, class-token pooling with ``ln_post`` before it, no attention pool."""
    transformer = getattr(visual, "transformer", None)
    return (
        transformer is not None
        and unsupported_block_reason(transformer, "image") is None
        and getattr(transformer, "batch_first", False)
        and not transformer.grad_checkpointing
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", None) == "tok"
        and not getattr(visual, "final_ln_after_pool", False)
        and not getattr(visual, "output_tokens", False)
    )
