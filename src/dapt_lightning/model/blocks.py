"""Lean forward passes of open_clip's plain ``ResidualAttentionBlock``, re-using its own weights.

Through ``nn.MultiheadAttention`` in training mode, a block's forward and backward dispatch about twice the
operators they need (111 instead of 54): batch-first transposes, the packed projection's
unflatten/squeeze/contiguous, per-head views, and views around every projection of 3-d tokens. On a GPU every
operator is host work, and a batch-32 DAPT step is bound by that host work, so the blocks are computed here on flat
tokens with one projection, one ``F.scaled_dot_product_attention`` and one reshape: the same arithmetic, equal to
open_clip's forward to float rounding (``tests/test_image_tower.py``, ``tests/test_text_fastpath.py``,
``tests/test_equivalence.py``).
Only blocks that ``unsupported_block_reason`` accepts may be run this way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn


def unsupported_block_reason(transformer: nn.Module, tower: str = "text") -> str | None:
    """Why the blocks of ``transformer`` cannot be computed by the functions here, or None when they can."""
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None or len(blocks) == 0:
        return f"the {tower} transformer has no resblocks"
    for index, block in enumerate(blocks):
        # Exact type: a subclass (or CustomResidualAttentionBlock) may compute something we do not replicate.
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return f"{tower} block {index} is a {type(block).__name__}, not a plain ResidualAttentionBlock"
        attn = block.attn
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            return f"{tower} block {index} has no packed q/k/v input projection"
        if attn.bias_k is not None or attn.bias_v is not None or attn.add_zero_attn:
            return f"{tower} block {index} uses bias_k/bias_v/add_zero_attn"
        if attn.dropout != 0.0 and attn.training:
            return f"{tower} block {index} has attention dropout in training mode"
    return None


def split_heads(qkv: torch.Tensor, batch: int, heads: int) -> tuple[torch.Tensor, ...]:
    """Packed projections ``[batch * length, 3 * width]`` -> q, k, v, each ``[batch, heads, length, head_dim]``."""
    head_dim = qkv.shape[-1] // (3 * heads)
    return qkv.reshape(batch, -1, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)


def mlp_residual(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The second half of a block: ``x + ls_2(mlp(ln_2(x)))``."""
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def is_causal_mask(mask: torch.Tensor | None) -> bool:
    """Whether ``mask`` (additive, or boolean with True = masked out) is the square causal mask."""
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    upper = torch.ones_like(mask, dtype=torch.bool).triu(1)
    if mask.dtype == torch.bool:  # True means "masked out" for nn.MultiheadAttention
        return bool(torch.equal(mask, upper))
    return bool(torch.isneginf(mask[upper]).all() and (mask[~upper] == 0).all())


def block_forward(block: ResidualAttentionBlock, x: torch.Tensor, batch: int, causal: bool = False) -> torch.Tensor:
    """``block`` over ``batch`` sequences of tokens flattened to ``x`` ``[batch * length, width]``, with full or
    ``causal`` attention. Flat tokens make every projection one plain matrix product, without views around it."""
    attn = block.attn
    q, k, v = split_heads(F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias), batch, attn.num_heads)
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(x.shape)
    return mlp_residual(block, x + block.ls_1(attn.out_proj(attended)))


def class_token_block_forward(block: ResidualAttentionBlock, x: torch.Tensor, batch: int) -> torch.Tensor:
    """The output ``[batch, width]`` of ``block`` at each sequence's first (class) token only, for flat tokens ``x``
    ``[batch * length, width]``: one query per sequence, attending to every token."""
    attn = block.attn
    width, heads = x.shape[-1], attn.num_heads
    head_dim = width // heads
    hidden = block.ln_1(x)
    q_weight, kv_weight = attn.in_proj_weight.split([width, 2 * width])
    q_bias, kv_bias = (None, None) if attn.in_proj_bias is None else attn.in_proj_bias.split([width, 2 * width])
    cls_hidden = hidden.reshape(batch, -1, width)[:, 0]
    q = F.linear(cls_hidden, q_weight, q_bias).reshape(batch, heads, 1, head_dim)
    k, v = F.linear(hidden, kv_weight, kv_bias).reshape(batch, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    attended = F.scaled_dot_product_attention(q, k, v).reshape(batch, width)
    cls = x.reshape(batch, -1, width)[:, 0]
    return mlp_residual(block, cls + block.ls_1(attn.out_proj(attended)))
