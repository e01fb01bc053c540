"""LoRA on the q, k and v projections of CLIP's attention blocks (CLIP-LoRA's placement), in the lean block path.

open_clip's blocks hold q, k and v as one packed ``in_proj_weight``; CLIP-LoRA (MaxZanella/CLIP-LoRA ``loralib``)
gives each of the three its own rank-``r`` update, ``W_q + s B_q A_q`` and so on, with ``s = alpha / sqrt(r)`` and
dropout on the update's input only. PEFT's LoRA for ``nn.MultiheadAttention`` adapts the packed projection with one
``A`` and one ``B`` (a rank-``r`` update shared by q, k and v), which is another model, so the update is computed
here, where the blocks' projections are (``model/blocks.py``). An adapter is attached to a block without becoming
part of the frozen CLIP's modules: the CLIP's state dict is unchanged and the adapters belong to the method.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTRIBUTE = "dapt_qkv_lora"
"""Where a block keeps its adapter (a plain attribute: not a submodule of the frozen CLIP)."""


class QKVLoRA(nn.Module):
    """Three rank-``rank`` updates of one block's packed q/k/v projection.

    Training (``self.training``): ``W h + b + s [B_q A_q d_q(h); B_k A_k d_k(h); B_v A_v d_v(h)]`` with three
    independent dropouts ``d``; evaluation: the updates merged into the weight, ``(W + s B A) h + b``.

    Args:
        width: the block's width.
        rank: ``r``.
        alpha: the scaling numerator (``s = alpha / sqrt(r)``, as CLIP-LoRA; not LoRA's ``alpha / r``).
        dropout: dropout probability on the update's input.
    """

    def __init__(self, width: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(3, rank, width))
        self.B = nn.Parameter(torch.zeros(3, width, rank))  # zero: the adapted CLIP starts as the CLIP
        for index in range(3):
            nn.init.kaiming_uniform_(self.A.data[index], a=math.sqrt(5))  # nn.Linear's init, per projection
        self.scaling = alpha / math.sqrt(rank)
        self.dropout = dropout

    def delta_weight(self) -> torch.Tensor:
        """``s B A`` for q, k and v stacked as the packed weight ``[3 * width, width]``."""
        return (self.B @ self.A).reshape(-1, self.A.shape[-1]) * self.scaling

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The update ``[..., 3 * width]`` of tokens ``[..., width]`` (with dropout in training)."""
        inputs = hidden.unsqueeze(0).expand(3, *hidden.shape)
        if self.training and self.dropout > 0:
            inputs = F.dropout(inputs, self.dropout, training=True)  # a mask per projection, as three modules
        flat = inputs.reshape(3, -1, hidden.shape[-1])
        update = (flat @ self.A.to(flat.dtype).transpose(1, 2)) @ self.B.to(flat.dtype).transpose(1, 2)
        return (update * self.scaling).permute(1, 0, 2).reshape(*hidden.shape[:-1], -1)

    def project(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The adapted packed projection of ``hidden`` with the block's frozen ``weight`` and ``bias``."""
        if self.training:
            return F.linear(hidden, weight, bias) + self(hidden)
        return F.linear(hidden, weight + self.delta_weight().to(weight.dtype), bias)


def lora_of(block: nn.Module) -> QKVLoRA | None:
    """The adapter attached to ``block``, if any."""
    return block.__dict__.get(ATTRIBUTE)


def attach_lora(blocks: nn.ModuleList, rank: int, alpha: float, dropout: float) -> nn.ModuleList:
    """An adapter for each of ``blocks`` (open_clip ``ResidualAttentionBlock``s), attached to it; returned for the
    method to own (its parameters, state dict and device)."""
    adapters = nn.ModuleList()
    for block in blocks:
        adapter = QKVLoRA(block.attn.embed_dim, rank, alpha, dropout).to(block.attn.in_proj_weight.device)
        block.__dict__[ATTRIBUTE] = adapter  # not a submodule: the frozen CLIP's state dict stays the CLIP's
        adapters.append(adapter)
    return adapters


def detach_lora(blocks: nn.ModuleList) -> None:
    """Remove the adapters from ``blocks``: they compute the CLIP's own projections again."""
    for block in blocks:
        block.__dict__.pop(ATTRIBUTE, None)
