"""Thin views onto open_clip's text and image towers that expose the steps prompt tuning needs.

They hold references to the frozen CLIP modules (no copies) and re-run open_clip's (and timm's) own sub-modules.
Which towers they serve, and how, is in ``model/families.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
from dapt_lightning.model.families import (
    ImageFamily,
    deep_visual_prompt_refusal,
    image_tower_family,
    text_tower_refusal,
    visual_prompt_refusal,
)

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
        self,
        embeddings: torch.Tensor,
        pool_positions: torch.Tensor,
        checkpointing: bool = False,
        layer_prompts: Sequence[torch.Tensor] = (),
        prompt_start: int = 1,
    ) -> torch.Tensor:
        """Unnormalised text features from prompt embeddings ``[N, L, width]``, pooled at ``pool_positions``.

        ``L`` may be shorter than the context length only where :attr:`pools_at_end_of_text`: then positions
        after the end of text cannot change its row. ``checkpointing`` recomputes each block in the backward pass
        instead of storing its activations. ``layer_prompts[k - 1]`` ``[P, width]`` replaces the ``P`` tokens from
        ``prompt_start`` on before block ``k`` (deep prompts, ``model/deep_prompts.py``); the positions do not move,
        so every token, the end of text included, keeps its place.
        """
        length = embeddings.shape[1]
        x = embeddings + self.positional_embedding[:length].to(embeddings.dtype)
        if layer_prompts or self.lean_blocks:
            return self._pool(self._blocks(x, checkpointing, layer_prompts, prompt_start), pool_positions)
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        if checkpointing and torch.is_grad_enabled():  # open_clip's own blocks: recompute the stack from its input
            x = checkpoint(self.transformer, x, attn_mask=mask, use_reentrant=False)
        else:
            x = self.transformer(x, attn_mask=mask)
        return self._pool(x, pool_positions)

    def _pool(self, x: torch.Tensor, pool_positions: torch.Tensor) -> torch.Tensor:
        # LayerNorm is per token: normalising only the pooled rows is the same.
        pooled = self.ln_final(x[torch.arange(x.shape[0], device=x.device), pool_positions])
        return self.project(pooled)

    def _blocks(
        self, x: torch.Tensor, checkpointing: bool, layer_prompts: Sequence[torch.Tensor], start: int
    ) -> torch.Tensor:
        """The blocks one by one over ``x`` ``[N, L, width]``, lean where they can be, with ``layer_prompts`` replacing
        the context tokens before blocks 1..J-1."""
        batch, length, width = x.shape
        blocks = self.transformer.resblocks
        if len(layer_prompts) >= len(blocks):
            raise ValueError(f"{len(layer_prompts) + 1} prompt layers, but this text tower has {len(blocks)} blocks")
        recompute = checkpointing and torch.is_grad_enabled()
        lean = self.lean_blocks
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        for index, block in enumerate(blocks):
            if 0 < index <= len(layer_prompts):
                x = replace_tokens(x, layer_prompts[index - 1], start)
            if not lean:
                x = run_block(block, x, getattr(self.transformer, "batch_first", True), mask, recompute)
                continue
            flat = x.reshape(-1, width)  # flat tokens (a view): see model/blocks.py
            if recompute:
                flat = checkpoint(block_forward, block, flat, batch, self.casts, True, use_reentrant=False)
            else:
                flat = block_forward(block, flat, batch, self.casts, causal=True)
            x = flat.reshape(batch, length, width)
        return x


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
        self.deep_prompt_refusal: str | None = deep_visual_prompt_refusal(self.visual)
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

    def forward(
        self,
        images: torch.Tensor,
        prompts: torch.Tensor | None = None,
        layer_prompts: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        """Unnormalised image features; ``prompts`` ``[P, width]`` go after the prefix tokens; ``layer_prompts``
        are deep prompts instead (:meth:`deep_forward`).

        Where only the class token's output is pooled, the last block computes attention and MLP for that one query
        (attending to every token) instead of for all of them: the same features with ~1/depth less compute. The
        other blocks run lean, with fewer operators than open_clip's ``nn.MultiheadAttention`` path.
        """
        if layer_prompts:
            return self.deep_forward(images, layer_prompts)
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
            x = replace_tokens(x, prompts, 1, count=0)
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

    def deep_forward(self, images: torch.Tensor, layer_prompts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Unnormalised image features with deep prompts (IVLP, MaPLe, PromptSRC): ``layer_prompts[0]`` ``[P, width]``
        is appended after the patch tokens, before ``ln_pre``; ``layer_prompts[k]`` replaces the last ``P`` tokens
        before block ``k``. The class token is pooled, as without prompts."""
        if self.deep_prompt_refusal is not None:
            raise ValueError(f"in this CLIP {self.deep_prompt_refusal}")
        visual = self.visual
        blocks = visual.transformer.resblocks
        if len(layer_prompts) > len(blocks):
            raise ValueError(f"{len(layer_prompts)} prompt layers, but this image tower has {len(blocks)} blocks")
        x = visual.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, patches, width]
        x = torch.cat([visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        x = visual.patch_dropout(x + visual.positional_embedding.to(x.dtype))
        count = layer_prompts[0].shape[0]
        x = visual.ln_pre(replace_tokens(x, layer_prompts[0], x.shape[1], count=0))
        batch, length, width = x.shape
        lean = self.cls_only_last_block
        for index, block in enumerate(blocks):
            if 0 < index < len(layer_prompts):
                x = replace_tokens(x, layer_prompts[index], length - count)
            if not lean:
                x = run_block(block, x, getattr(visual.transformer, "batch_first", True), None, False)
            elif index < len(blocks) - 1:
                x = block_forward(block, x.reshape(-1, width), batch, self.casts).reshape(batch, length, width)
            else:
                pooled = visual.ln_post(class_token_block_forward(block, x.reshape(-1, width), batch, self.casts))
        if not lean:
            pooled, _ = visual._pool(x[:, : length - count])
        return pooled @ visual.proj if visual.proj is not None else pooled

    def _timm_forward(self, images: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        """timm's ``VisionTransformer.forward_features`` and ``forward_head``, then open_clip's head, with prompts
        between the prefix tokens and the patches."""
        trunk = self.visual.trunk
        if prompts is None:
            return self.visual(images)
        prefix = trunk.num_prefix_tokens
        x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(images))))
        x = trunk.norm(trunk.blocks(replace_tokens(x, prompts, prefix, count=0)))
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
        x = replace_tokens(trunk.norm_pre(x), prompts, prefix, count=0)
        rope = _identity_rows_first(rope, len(prompts))
        mixed = getattr(trunk, "rope_mixed", False)
        for index, block in enumerate(trunk.blocks):
            x = block(x, rope=rope[index] if mixed else rope)
        x = trunk.norm(x)
        return self.visual.head(trunk.forward_head(_remove(x, len(prompts), prefix)))


def replace_tokens(tokens: torch.Tensor, prompts: torch.Tensor, start: int, count: int | None = None) -> torch.Tensor:
    """``tokens`` ``[B, N, W]`` with the ``count`` tokens from ``start`` on (default: as many as ``prompts``)
    replaced by ``prompts`` ``[P, W]`` in every sequence (``count=0`` inserts them)."""
    count = prompts.shape[0] if count is None else count
    prompts = prompts.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
    return torch.cat([tokens[:, :start], prompts, tokens[:, start + count :]], dim=1)


def run_block(
    block: nn.Module, x: torch.Tensor, batch_first: bool, mask: torch.Tensor | None, recompute: bool
) -> torch.Tensor:
    """open_clip's own ``block`` over batch-first tokens ``x`` ``[B, N, W]`` (recomputed in the backward pass when
    ``recompute``)."""
    x = x if batch_first else x.transpose(0, 1)
    x = checkpoint(block, x, None, None, mask, use_reentrant=False) if recompute else block(x, attn_mask=mask)
    return x if batch_first else x.transpose(0, 1)


def _identity_rows_first(rope: torch.Tensor, count: int) -> torch.Tensor:
    """A timm rotary embedding (``[..., tokens, 2 * dim]``: sines then cosines) with ``count`` identity rows (sine 0,
    cosine 1) before its first token."""
    half = rope.shape[-1] // 2
    identity = torch.cat([rope.new_zeros(half), rope.new_ones(half)]).expand(*rope.shape[:-2], count, rope.shape[-1])
    return torch.cat([identity, rope], dim=-2)


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
