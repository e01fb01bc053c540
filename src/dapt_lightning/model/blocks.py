"""Lean forward passes of open_clip's plain ``ResidualAttentionBlock``, re-using its own weights.

Through ``nn.MultiheadAttention`` in training mode, a block's forward and backward dispatch about twice the
operators they need (BENCHMARKS.md has the counts): batch-first transposes, the packed projection's
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

from dapt_lightning.model.lora import lora_of


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
        mlp = block.mlp
        if not (
            isinstance(mlp, nn.Sequential)
            and list(mlp._modules) == ["c_fc", "gelu", "c_proj"]
            and isinstance(mlp.c_fc, nn.Linear)
            and isinstance(mlp.c_proj, nn.Linear)
        ):
            return f"{tower} block {index} has an MLP other than Linear, activation, Linear"
    return None


class CastCache:
    """Frozen weights cast once to the autocast dtype, kept by the tower that owns them.

    Autocast caches its casts only for leaves that require grad, so a frozen CLIP's weights and biases would be cast
    again at every call (host work per operator bounds a batch-32 step on a fast GPU). A kept copy holds the same
    values (the same rounding of the same weight) and is rebuilt when what determines it changes: the weight's
    version (an in-place update), storage, dtype or the autocast dtype. It costs the weights' size in that dtype.
    Nothing is kept while ``torch.compile`` traces, where inductor fuses the casts.
    """

    def __init__(self) -> None:
        # id(weight) -> (weight, key, copy); holding the weight keeps its id from being reused by another tensor.
        self._copies: dict[int, tuple[torch.Tensor, tuple, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._copies)

    def clear(self) -> None:
        """Drop every kept copy."""
        self._copies.clear()

    def __call__(self, weight: torch.Tensor | None) -> torch.Tensor | None:
        """``weight`` as autocast would cast it for a matrix product; unchanged outside autocast."""
        # Inference tensors (a CLIP loaded under inference_mode) have no version to check a copy against.
        if weight is None or weight.requires_grad or torch.compiler.is_compiling() or weight.is_inference():
            return weight
        device_type = weight.device.type
        if not torch.is_autocast_enabled(device_type):
            return weight
        dtype = torch.get_autocast_dtype(device_type)
        if weight.dtype == dtype or not weight.is_floating_point():
            return weight
        key = (dtype, weight.dtype, weight._version, weight.data_ptr())
        entry = self._copies.get(id(weight))
        if entry is None or entry[0] is not weight or entry[1] != key:
            # Outside inference mode: a copy made during evaluation is also used by later training steps.
            with torch.inference_mode(False), torch.no_grad():
                entry = (weight, key, weight.to(dtype))
            self._copies[id(weight)] = entry
        return entry[2]


def linear(x: torch.Tensor, module: nn.Linear, casts: CastCache) -> torch.Tensor:
    """``module(x)`` with its frozen weight and bias cast once under autocast (see ``CastCache``)."""
    return F.linear(x, casts(module.weight), casts(module.bias))


def in_projection(block: ResidualAttentionBlock, h: torch.Tensor, casts: CastCache) -> torch.Tensor:
    """The packed q/k/v projection ``[..., 3 * width]`` of normalised tokens ``h`` (adapted, when the block has a
    LoRA adapter: ``model/lora.py``)."""
    attn = block.attn
    adapter = lora_of(block)
    if adapter is not None:
        return adapter.project(h, casts(attn.in_proj_weight), casts(attn.in_proj_bias))
    return F.linear(h, casts(attn.in_proj_weight), casts(attn.in_proj_bias))


def split_heads(qkv: torch.Tensor, batch: int, heads: int) -> tuple[torch.Tensor, ...]:
    """Packed projections ``[batch * length, 3 * width]`` -> q, k, v, each ``[batch, heads, length, head_dim]``."""
    head_dim = qkv.shape[-1] // (3 * heads)
    return qkv.reshape(batch, -1, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)


def mlp_residual(block: ResidualAttentionBlock, x: torch.Tensor, casts: CastCache) -> torch.Tensor:
    """The second half of a block: ``x + ls_2(mlp(ln_2(x)))``."""
    mlp = block.mlp
    return x + block.ls_2(linear(mlp.gelu(linear(block.ln_2(x), mlp.c_fc, casts)), mlp.c_proj, casts))


def attention_residual(
    block: ResidualAttentionBlock, x: torch.Tensor, attended: torch.Tensor, casts: CastCache
) -> torch.Tensor:
    """``x + ls_1(out_proj(attended))``: the first half of a block, after its attention."""
    return x + block.ls_1(linear(attended, block.attn.out_proj, casts))


def is_causal_mask(mask: torch.Tensor | None) -> bool:
    """Whether ``mask`` (additive, or boolean with True = masked out) is the square causal mask."""
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    upper = torch.ones_like(mask, dtype=torch.bool).triu(1)
    if mask.dtype == torch.bool:  # True means "masked out" for nn.MultiheadAttention
        return bool(torch.equal(mask, upper))
    return bool(torch.isneginf(mask[upper]).all() and (mask[~upper] == 0).all())


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, computed in fp32 when its backward would run in bf16 on the CPU.

    The CPU's bf16 attention backward is several times slower than its fp32 one at these sequence lengths (measured
    on a 2-core Xeon with AMX: 5.3x for the text tower's buckets at 1000 classes, 1.9x for the image tower; see
    BENCHMARKS.md), and attention is a few percent of a step's products, so fp32 costs less than it saves, and is
    the more precise of the two. Under no_grad or inference_mode (evaluation) bf16 attention is the faster one and is
    kept. Grad mode alone decides, so one computation never depends on which of its inputs happen to need a grad.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled():
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal=is_causal)


def block_forward(
    block: ResidualAttentionBlock, x: torch.Tensor, batch: int, casts: CastCache, causal: bool = False
) -> torch.Tensor:
    """``block`` over ``batch`` sequences of tokens flattened to ``x`` ``[batch * length, width]``, with full or
    ``causal`` attention. Flat tokens make every projection one plain matrix product, without views around it."""
    q, k, v = split_heads(in_projection(block, block.ln_1(x), casts), batch, block.attn.num_heads)
    attended = attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(x.shape)
    return mlp_residual(block, attention_residual(block, x, attended, casts), casts)


def class_token_block_forward(
    block: ResidualAttentionBlock, x: torch.Tensor, batch: int, casts: CastCache
) -> torch.Tensor:
    """The output ``[batch, width]`` of ``block`` at each sequence's first (class) token only, for flat tokens ``x``
    ``[batch * length, width]``: one query per sequence, attending to every token."""
    attn = block.attn
    width, heads = x.shape[-1], attn.num_heads
    head_dim = width // heads
    hidden = block.ln_1(x)
    weight, bias = casts(attn.in_proj_weight), casts(attn.in_proj_bias)
    adapter = lora_of(block)
    if adapter is not None and not adapter.training:
        weight = weight + adapter.delta_weight().to(weight.dtype)  # merged, as in_projection evaluates
    q_weight, kv_weight = weight.split([width, 2 * width])
    q_bias, kv_bias = (None, None) if bias is None else bias.split([width, 2 * width])
    cls_hidden = hidden.reshape(batch, -1, width)[:, 0]
    q = F.linear(cls_hidden, q_weight, q_bias)
    kv = F.linear(hidden, kv_weight, kv_bias)
    if adapter is not None and adapter.training:  # the updates of q (class tokens) and of k, v (every token)
        q = q + adapter(cls_hidden)[..., :width]
        kv = kv + adapter(hidden)[..., width:]
    q = q.reshape(batch, heads, 1, head_dim)
    k, v = kv.reshape(batch, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    attended = attention(q, k, v).reshape(batch, width)
    return mlp_residual(block, attention_residual(block, x.reshape(batch, -1, width)[:, 0], attended, casts), casts)
