"""DAPT's losses as pure functions (see SPEC.md): cross-entropy, inter- and intra-dispersion, their sum."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LossTerms(NamedTuple):
    """The total loss and each of its terms (unweighted)."""

    total: torch.Tensor
    ce: torch.Tensor
    inter: torch.Tensor
    intra: torch.Tensor


def inter_dispersion(text_features: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Mean over unordered class pairs of ``exp(-t * ||w_m - w_n||^2)``, in float32 (no log, no diagonal)."""
    features = text_features.float()
    if features.shape[0] < 2:
        return features.new_zeros(())
    return torch.pdist(features, p=2).pow(2).mul(-t).exp().mean()


def intra_dispersion(image_features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error between image features and their class prototypes, over all B x D elements."""
    return F.mse_loss(image_features, prototypes[labels].to(image_features.dtype))


def dapt_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    prototypes: torch.Tensor | None,
    beta_v: float,
    beta_t: float,
    t: float = 2.0,
) -> LossTerms:
    """``L = CE + beta_v * L_intra + beta_t * L_inter``; a term whose beta is 0 is still reported."""
    ce = F.cross_entropy(logits, labels)
    inter = inter_dispersion(text_features, t)
    if prototypes is None:
        if beta_v != 0:
            raise ValueError("beta_v > 0 needs class prototypes; add the PrototypeCallback or set beta_v to 0")
        intra = ce.new_zeros(())
    else:
        intra = intra_dispersion(image_features, prototypes, labels)
    total = ce + beta_v * intra + beta_t * inter
    return LossTerms(total, ce, inter, intra)
