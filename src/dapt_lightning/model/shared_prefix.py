"""Exact shared-prefix encoding of CoOp prompts whose context is shared by all classes.

With a class-shared context, every prompt starts with the same ``1 + n_ctx`` tokens (SOT and the context).
The text transformer is causal, so the hidden states of those tokens are the same for every class at every
layer: we compute them once (a batch of one, with gradient to the context) and run only each class's own
tokens (name, '.', EOT), whose queries attend to the shared prefix's keys and values plus their own causal
part. On the CPU, where compute dominates, classes are grouped into buckets of equal suffix length so that no
token is padded. On GPUs, where every attention call costs kernel launches and autograd bookkeeping, up to
``SINGLE_ATTENTION_MAX_TOKENS`` packed tokens run as one attention call whose block mask lets each token see the
prefix and its own class's earlier tokens; more tokens than that run in two buckets with the least padding
(padding a suffix with the tokens after its EOT is exact too). Token-wise work (layer norms, projections, MLP)
runs on all tokens packed together, in one matrix product per weight.

The blocks' own weights are re-used (``ln_1``, ``attn.in_proj``/``out_proj``, ``ls_1``, ``ln_2``, ``mlp``,
``ls_2`` of open_clip's ``ResidualAttentionBlock``); only the attention is recomputed here, with
``F.scaled_dot_product_attention`` and an explicit mask. The layout of open_clip's ``Transformer``
(``batch_first`` or not) does not matter: we never call its ``forward``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch
from open_clip.transformer import ResidualAttentionBlock
from torch.utils.checkpoint import checkpoint

from dapt_lightning.model.blocks import (
    attention,
    attention_residual,
    in_projection,
    mlp_residual,
    split_heads,
    unsupported_block_reason,
)
from dapt_lightning.model.compilation import CompileMode, compile_function, may_use_cuda_graphs
from dapt_lightning.model.prompts import TextPromptLearner
from dapt_lightning.model.towers import TextTower

SharedPrefixLayout = Literal["auto", "per_length", "single_attention", "two_buckets"]
"""How the per-class suffixes are packed for attention (see ``SharedPrefixTextEncoder``)."""
_LAYOUT_BUCKETS: dict[str, int | None] = {"per_length": None, "single_attention": 0, "two_buckets": 2}


@dataclass(frozen=True)
class SuffixPlan:
    """How the per-class suffix tokens are packed: bucket after bucket, classes sorted by suffix length."""

    rows: torch.Tensor  # [T] class of each packed token
    cols: torch.Tensor  # [T] position of each packed token inside its class's suffix
    eot: torch.Tensor  # [C] packed index of each class's EOT token, in class order
    # (suffix length, number of classes), in packing order; empty: one attention over all packed tokens
    buckets: tuple[tuple[int, int], ...]


def _group_lengths(counts: dict[int, int], max_buckets: int | None) -> dict[int, int]:
    """Map each suffix length to the (longer or equal) length of its bucket, using at most ``max_buckets``
    buckets and as few padded tokens as possible. Padding a suffix with the tokens that follow its EOT is
    exact: the causal mask keeps them from reaching the EOT row."""
    lengths = sorted(counts)
    if max_buckets is None or max_buckets >= len(lengths):
        return {length: length for length in lengths}
    n = len(lengths)
    # best[k][j]: fewest tokens for lengths[:j] in k buckets (contiguous ranges of the sorted lengths).
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0
    for k in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            classes = 0
            for i in range(j - 1, -1, -1):  # the last bucket holds lengths[i:j], padded to lengths[j - 1]
                classes += counts[lengths[i]]
                cost = best[k - 1][i] + classes * lengths[j - 1]
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, max_buckets + 1), key=lambda k: best[k][n])
    mapping: dict[int, int] = {}
    j = n
    while j > 0:
        i = cut[k][j]
        mapping.update({length: lengths[j - 1] for length in lengths[i:j]})
        j, k = i, k - 1
    return mapping


# Above this many packed tokens (prefix + every class's suffix), the single attention's quadratic cost outgrows the
# launches that buckets add. 1024 tokens are about 240 ImageNet class names (37 are 172 tokens, 397 are 1637): every
# benchmark dataset of about 100 classes or fewer gets the single attention.
SINGLE_ATTENTION_MAX_TOKENS = 1024


def auto_max_buckets(device: torch.device, packed_tokens: int) -> int | None:
    """``max_buckets`` for ``"auto"``: per-length buckets on the CPU, one attention or two buckets on GPUs."""
    if device.type == "cpu":
        return None
    return 0 if packed_tokens <= SINGLE_ATTENTION_MAX_TOKENS else 2


def _make_plan(suffix_lengths: torch.Tensor, max_buckets: int | None = None) -> SuffixPlan:
    """Pack the suffixes: into at most ``max_buckets`` length buckets (None: one per length), or, with
    ``max_buckets=0``, unpadded one after another for a single block-masked attention."""
    lengths = suffix_lengths.tolist()
    device = suffix_lengths.device
    as_long = {"dtype": torch.long, "device": device}
    if max_buckets == 0:
        starts = [0, *itertools.accumulate(lengths)][:-1]
        return SuffixPlan(
            rows=torch.tensor([c for c, length in enumerate(lengths) for _ in range(length)], **as_long),
            cols=torch.tensor([col for length in lengths for col in range(length)], **as_long),
            eot=torch.tensor([start + length - 1 for start, length in zip(starts, lengths, strict=True)], **as_long),
            buckets=(),
        )
    counts: dict[int, int] = {}
    for length in lengths:
        counts[length] = counts.get(length, 0) + 1
    padded = _group_lengths(counts, max_buckets)
    order = sorted(range(len(lengths)), key=lambda c: lengths[c])
    rows: list[int] = []
    cols: list[int] = []
    eot = [0] * len(lengths)
    buckets: list[list[int]] = []
    for c in order:
        length = padded[lengths[c]]
        if buckets and buckets[-1][0] == length:
            buckets[-1][1] += 1
        else:
            buckets.append([length, 1])
        eot[c] = len(rows) + lengths[c] - 1
        rows.extend([c] * length)
        cols.extend(range(length))
    return SuffixPlan(
        rows=torch.tensor(rows, **as_long),
        cols=torch.tensor(cols, **as_long),
        eot=torch.tensor(eot, **as_long),
        buckets=tuple((length, count) for length, count in buckets),
    )


def layout_buckets(layout: SharedPrefixLayout | int) -> int | None | str:
    """``max_buckets`` of a layout: None per length, 0 one attention, k at most k buckets, ``"auto"``."""
    if layout == "auto":
        return "auto"
    if isinstance(layout, int) and not isinstance(layout, bool) and layout >= 0:
        return layout
    if layout not in _LAYOUT_BUCKETS:
        raise ValueError(
            f"--model.text_layout must be one of auto, {', '.join(_LAYOUT_BUCKETS)} or a bucket count >= 0; "
            f"got {layout!r}"
        )
    return _LAYOUT_BUCKETS[layout]


class SharedPrefixTextEncoder:
    """Encodes CoOp prompts with a class-shared context by computing the shared prefix once.

    A plain object, not an ``nn.Module``: it only borrows the tower's frozen modules and the learner's context, so
    it adds nothing to any ``state_dict``. The packing plan depends only on the token ids and the layout; it is
    cached on the identity and version of the learner's ``tokens`` buffer (rebuilt after a device move).

    Args:
        text_tower: the frozen text tower whose blocks are re-used.
        text_prompt: the class-shared CoOp context to encode.
        layout: ``per_length`` (one bucket per suffix length, no padding), ``single_attention`` (one attention
            over all packed tokens with a block mask, quadratic in their number), ``two_buckets`` (the least
            padding in two buckets; padding a suffix with its own following tokens is exact), a bucket count, or
            ``auto``: per length on the CPU, where compute dominates; on GPUs, where each attention call's kernel
            launches dominate at CLIP's sizes, one attention up to ``SINGLE_ATTENTION_MAX_TOKENS`` packed tokens
            and two buckets beyond (BENCHMARKS.md has the measurements).
        checkpointing: recompute each layer in the backward pass instead of storing its activations.
        compile_mode: ``torch.compile`` mode for the layer stack (see ``model/compilation.py``); ``off``: eager.
    """

    name = "shared_prefix"

    def __init__(
        self,
        text_tower: TextTower,
        text_prompt: TextPromptLearner,
        layout: SharedPrefixLayout | int = "auto",
        checkpointing: bool = False,
        compile_mode: CompileMode = "off",
    ) -> None:
        reason = shared_prefix_unsupported(text_tower, text_prompt)
        if reason is not None:
            raise ValueError(
                f"--model.text_encoding shared_prefix is not possible: {reason}. Use 'auto' or 'truncated'."
            )
        self.tower = text_tower
        self.text_prompt = text_prompt
        self.max_buckets = layout_buckets(layout)
        self.checkpointing = checkpointing
        # Only the layer stack is compiled: the plan and masks are built eagerly (Python lists, caches).
        self._run_layers = compile_function(self._layers, compile_mode)
        # CUDA-graph replays reuse their output memory: features that outlive the call are cloned (they are small).
        self._clone_outputs = may_use_cuda_graphs(compile_mode)
        self._plan_key: tuple | None = None
        self._plan: SuffixPlan | None = None
        self._masks: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        self._block_mask_key: tuple[SuffixPlan, torch.Tensor] | None = None

    @property
    def plan(self) -> SuffixPlan | None:
        """The packing plan of the last call (None before the first)."""
        return self._plan

    def plan_for(self, tokens: torch.Tensor, prefix_length: int) -> SuffixPlan:
        """The packing plan of prompts ``tokens`` after a shared prefix of ``prefix_length`` tokens (cached)."""
        key = (tokens, tokens._version, prefix_length, self.max_buckets)
        cached = self._plan_key
        # A strong reference to `tokens` keeps its identity from being reused by another tensor.
        if cached is None or cached[0] is not tokens or cached[1:] != key[1:]:
            # Built outside inference mode even when first used there (Lightning validates under
            # inference_mode): the index tensors are saved for backward in later training steps.
            with torch.inference_mode(False):
                suffix_lengths = tokens.argmax(dim=-1) - prefix_length + 1
                max_buckets = self.max_buckets
                if max_buckets == "auto":
                    max_buckets = auto_max_buckets(tokens.device, prefix_length + int(suffix_lengths.sum()))
                self._plan = _make_plan(suffix_lengths, max_buckets)
            self._plan_key = key
        assert self._plan is not None
        return self._plan

    def _block_mask(self, plan: SuffixPlan, prefix_length: int) -> torch.Tensor:
        """Boolean mask ``[P + T, P + T]`` of the single attention (True = may attend): the prefix is causal,
        and each suffix token sees the whole prefix and its own class's tokens up to itself."""
        if self._block_mask_key is None or self._block_mask_key[0] is not plan:
            with torch.inference_mode(False):  # cached across steps: see plan_for
                device = plan.rows.device
                owner = torch.cat([torch.full((prefix_length,), -1, device=device), plan.rows])  # -1: prefix
                position = torch.cat([torch.arange(prefix_length, device=device), prefix_length + plan.cols])
                causal = position[None, :] <= position[:, None]
                visible = (owner[None, :] == owner[:, None]) | (owner[None, :] == -1)
                self._block_mask_key = (plan, causal & visible)
        return self._block_mask_key[1]

    def masks(self, plan: SuffixPlan, prefix_length: int) -> tuple[torch.Tensor, ...]:
        """The attention masks of ``plan``'s layout: one per bucket, or the single block mask (built once, cached)."""
        if not plan.buckets:
            return (self._block_mask(plan, prefix_length),)
        return tuple(self._mask(prefix_length, length, plan.rows.device) for length, _ in plan.buckets)

    def _mask(self, prefix_length: int, suffix_length: int, device: torch.device) -> torch.Tensor:
        """Boolean mask ``[S, P + S]`` (True = may attend): the whole prefix, then causal within the suffix."""
        key = (prefix_length, suffix_length, device)
        if key not in self._masks:
            with torch.inference_mode(False):  # cached across steps: see plan_for
                own = torch.ones(suffix_length, suffix_length, dtype=torch.bool, device=device).tril()
                shared = torch.ones(suffix_length, prefix_length, dtype=torch.bool, device=device)
                self._masks[key] = torch.cat([shared, own], dim=1)
        return self._masks[key]

    def _attention(
        self,
        block: ResidualAttentionBlock,
        h: torch.Tensor,
        prefix_length: int,
        buckets: tuple[tuple[int, int], ...],
        masks: tuple[torch.Tensor, ...],
    ) -> torch.Tensor:
        """Multi-head self-attention of the packed tokens ``h`` ``[P + T, W]`` (prefix first), heads merged, before
        the output projection."""
        attn = block.attn
        width = h.shape[-1]
        heads = attn.num_heads
        qkv = in_projection(block, h, self.tower.casts)
        if not buckets:  # one attention over every packed token, under the block mask
            q, k, v = split_heads(qkv, 1, heads)
            return attention(q, k, v, attn_mask=masks[0]).transpose(1, 2).reshape(-1, width)
        P = prefix_length
        # One split into the prefix and the buckets (slicing per bucket would make the backward pass
        # allocate and fill a full-size gradient per slice).
        chunks = qkv.split([P, *(length * count for length, count in buckets)], dim=0)
        q_prefix, k_prefix, v_prefix = split_heads(chunks[0], 1, heads)
        # The prefix alone is an ordinary square causal attention.
        outputs = [attention(q_prefix, k_prefix, v_prefix, is_causal=True)]
        for chunk, (_, count), mask in zip(chunks[1:], buckets, masks, strict=True):
            q_b, k_b, v_b = split_heads(chunk, count, heads)
            k_b = torch.cat([k_prefix.expand(count, -1, -1, -1), k_b], dim=2)
            v_b = torch.cat([v_prefix.expand(count, -1, -1, -1), v_b], dim=2)
            outputs.append(attention(q_b, k_b, v_b, attn_mask=mask))
        return torch.cat([o.transpose(1, 2).reshape(-1, width) for o in outputs], dim=0)

    def _layer(
        self,
        block: ResidualAttentionBlock,
        x: torch.Tensor,
        prefix_length: int,
        buckets: tuple[tuple[int, int], ...],
        masks: tuple[torch.Tensor, ...],
    ) -> torch.Tensor:
        attended = self._attention(block, block.ln_1(x), prefix_length, buckets, masks)
        casts = self.tower.casts
        return mlp_residual(block, attention_residual(block, x, attended, casts), casts)

    def _layers(
        self, x: torch.Tensor, prefix_length: int, buckets: tuple[tuple[int, int], ...], masks: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """All text blocks over the packed tokens ``x`` ``[P + T, W]``."""
        for block in self.tower.transformer.resblocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._layer, block, x, prefix_length, buckets, masks, use_reentrant=False)
            else:
                x = self._layer(block, x, prefix_length, buckets, masks)
        return x

    def __call__(self) -> torch.Tensor:
        """Unnormalised text features ``[C, D]`` of the class-shared CoOp prompts."""
        text_prompt = self.text_prompt
        ctx = text_prompt.txt_ctx
        # SOT is the same token for every class: row 0 stands for all of them.
        prefix = torch.cat([text_prompt.token_prefix[0].to(ctx.dtype), ctx], dim=0)
        features = self.encode(prefix, text_prompt.token_suffix, text_prompt.tokens)
        return features.clone() if self._clone_outputs else features

    def encode(self, prefix: torch.Tensor, suffix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features ``[C, D]``, equal to running each full prompt through the tower.

        Args:
            prefix: embeddings of the shared prefix ``[P, W]`` (SOT + context), positions ``0..P-1``.
            suffix: embeddings of each class's remaining tokens ``[C, L - P, W]`` (name, '.', EOT, padding).
            tokens: the prompts' token ids ``[C, L]``; EOT is the largest id.
        """
        tower = self.tower
        P = prefix.shape[0]
        plan = self.plan_for(tokens, P)
        positional = tower.positional_embedding.to(prefix.dtype)
        packed = suffix[plan.rows, plan.cols].to(prefix.dtype) + positional[P + plan.cols]
        x = torch.cat([prefix + positional[:P], packed], dim=0)
        x = self._run_layers(x, P, plan.buckets, self.masks(plan, P))
        pooled = tower.ln_final(x[P + plan.eot])
        return tower.project(pooled)


def shared_prefix_unsupported(text_tower: TextTower, text_prompt: TextPromptLearner | None) -> str | None:
    """Why the shared-prefix encoding cannot be used for these prompts, or None when it can."""
    if not isinstance(text_prompt, TextPromptLearner):
        return "text prompts are off (a fixed template has no learned shared prefix)"
    if text_prompt.class_specific:
        return "the context is class-specific, so the prefix differs between classes"
    if len(getattr(text_prompt, "deep_ctx", ())) > 0:
        return "deep text prompts replace the context inside the tower, which the shared prefix computes once"
    if not text_tower.causal:
        return "the text transformer's attention mask is not the standard causal mask"
    if text_tower.pool_type != "argmax":
        return f"the text tower pools with {text_tower.pool_type!r}, not at the highest token id"
    return unsupported_block_reason(text_tower.transformer)
