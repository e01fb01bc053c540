"""Lean forward passes of open_clip's plain ``ResidualAttentionBlock``, re-using its own weights.

``nn.MultiheadAttention`` in training mode spends about 40 extra operators per block on layout changes and checks
(batch-first transposes, the packed projection's unflatten/squeeze/contiguous, per-head views). On a GPU every
operator is host work, and a batch-32 DAPT step is bound by that host work, so the blocks of both towers are
computed here with one projection, one ``F.scaled_dot_product_attention`` and one reshape: the same arithmetic,
equal to open_clip's forward to float rounding (``tests/test_image_tower.py``, ``tests/test_equivalence.py``).
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
    """``[batch * length, 3 * width]`` (or ``[batch, length, 3 * width]``) packed projections -> q, k, v, each
    ``[batch, heads, length, head_dim]``."""
    head_dim = qkv.shape[-1] // (3 * heads)
    return qkv.reshape(batch, -1, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)


def merge_heads(attended: torch.Tensor) -> torch.Tensor:
    """``[batch, heads, length, head_dim]`` -> ``[batch, length, width]``."""
    batch, heads, length, head_dim = attended.shape
    return attended.transpose(1, 2).reshape(batch, length, heads * head_dim)


def mlp_residual(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The second half of a block: ``x + ls_2(mlp(ln_2(x)))``."""
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def block_forward(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` for batch-first tokens ``x`` ``[B, L, W]`` with full (unmasked) attention."""
    attn = block.attn
    q, k, v = split_heads(F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias), x.shape[0], attn.num_heads)
    x = x + block.ls_1(attn.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v))))
    return mlp_residual(block, x)


def class_token_block_forward(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The output ``[B, 1, W]`` of ``block(x)`` at the first (class) token only: one query attending to every token."""
    attn = block.attn
    width, heads = x.shape[-1], attn.num_heads
    hidden = block.ln_1(x)
    q_weight, kv_weight = attn.in_proj_weight.split([width, 2 * width])
    q_bias, kv_bias = (None, None) if attn.in_proj_bias is None else attn.in_proj_bias.split([width, 2 * width])
    batch, head_dim = x.shape[0], width // heads
    q = F.linear(hidden[:, :1], q_weight, q_bias).reshape(batch, 1, heads, head_dim).transpose(1, 2)
    k, v = F.linear(hidden, kv_weight, kv_bias).reshape(batch, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    cls = x[:, :1] + block.ls_1(attn.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v))))
    return mlp_residual(block, cls)
