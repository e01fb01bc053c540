"""DAPT's loss terms against values computed by hand or with plain Python loops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dapt_lightning.losses import dapt_loss, inter_dispersion, intra_dispersion


def _inter_by_loops(rows: list[list[float]], t: float) -> float:
    values = []
    for a, b in itertools.combinations(rows, 2):
        squared = sum((x - y) ** 2 for x, y in zip(a, b, strict=True))
        values.append(math.exp(-t * squared))
    return sum(values) / len(values)


def test_inter_dispersion_by_hand() -> None:
    # Orthonormal rows: every pair is at squared distance 2, so the loss is exp(-2t) (t=2: exp(-4)).
    features = torch.eye(3)
    assert inter_dispersion(features).item() == pytest.approx(math.exp(-4.0), rel=1e-6)
    # a=(1,0), b=(0.6,0.8): d^2 = 0.4^2 + 0.8^2 = 0.8.
    pair = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    assert inter_dispersion(pair, t=2.0).item() == pytest.approx(math.exp(-1.6), rel=1e-6)
    assert inter_dispersion(pair, t=0.5).item() == pytest.approx(math.exp(-0.4), rel=1e-6)


@pytest.mark.parametrize("t", [0.5, 2.0, 5.0])
def test_inter_dispersion_matches_pair_loop(t: float) -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(5, 4, generator=generator), dim=-1)
    expected = _inter_by_loops(features.tolist(), t)  # mean over the C(C-1)/2 = 10 unordered pairs
    assert inter_dispersion(features, t).item() == pytest.approx(expected, rel=1e-5)


def test_inter_dispersion_is_float32_for_half_inputs() -> None:
    features = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    value = inter_dispersion(features.to(torch.bfloat16))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(_inter_by_loops(features.to(torch.bfloat16).float().tolist(), 2.0), rel=1e-5)


def test_inter_dispersion_single_class_is_zero() -> None:
    value = inter_dispersion(torch.tensor([[0.6, 0.8]]))
    assert value.shape == ()
    assert value.item() == 0.0


def test_intra_dispersion_by_hand() -> None:
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    image_features = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 2.0]])
    labels = torch.tensor([0, 1, 1])
    # Squared errors: (1, 1), (0, 0.25), (1, 2.25); mean over all B*D = 6 elements = 5.5 / 6.
    assert intra_dispersion(image_features, prototypes, labels).item() == pytest.approx(5.5 / 6, rel=1e-6)


def test_intra_dispersion_matches_loop() -> None:
    generator = torch.Generator().manual_seed(1)
    prototypes = torch.randn(3, 4, generator=generator)
    image_features = torch.randn(6, 4, generator=generator)
    labels = torch.tensor([2, 0, 1, 1, 2, 0])
    total = 0.0
    for feature, label in zip(image_features.tolist(), labels.tolist(), strict=True):
        total += sum((f - p) ** 2 for f, p in zip(feature, prototypes[label].tolist(), strict=True))
    expected = total / (6 * 4)  # the 1/D factor is part of the loss (folded into beta_v by the paper)
    assert intra_dispersion(image_features, prototypes, labels).item() == pytest.approx(expected, rel=1e-5)


def _batch() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(2)
    text = torch.nn.functional.normalize(torch.randn(3, 4, generator=generator), dim=-1)
    images = torch.nn.functional.normalize(torch.randn(5, 4, generator=generator), dim=-1)
    prototypes = 0.8 * torch.nn.functional.normalize(torch.randn(3, 4, generator=generator), dim=-1)
    labels = torch.tensor([0, 2, 1, 1, 0])
    logits = 100.0 * images @ text.t()
    return logits, labels, images, text, prototypes


def _cross_entropy_by_loop(logits: torch.Tensor, labels: torch.Tensor) -> float:
    total = 0.0
    for row, label in zip(logits.double().tolist(), labels.tolist(), strict=True):
        top = max(row)
        log_sum = top + math.log(sum(math.exp(v - top) for v in row))
        total += log_sum - row[label]
    return total / len(labels)


@pytest.mark.parametrize(("beta_v", "beta_t", "t"), [(10.0, 0.01, 2.0), (0.0, 1.0, 2.0), (100.0, 10.0, 0.5)])
def test_dapt_loss_weights_its_terms(beta_v: float, beta_t: float, t: float) -> None:
    logits, labels, images, text, prototypes = _batch()
    terms = dapt_loss(logits, labels, images, text, prototypes, beta_v=beta_v, beta_t=beta_t, t=t)
    ce = _cross_entropy_by_loop(logits, labels)
    inter = _inter_by_loops(text.tolist(), t)
    intra = ((images - prototypes[labels]) ** 2).mean().item()
    assert terms.ce.item() == pytest.approx(ce, rel=1e-5)
    assert terms.inter.item() == pytest.approx(inter, rel=1e-5)
    assert terms.intra.item() == pytest.approx(intra, rel=1e-5)
    assert terms.total.item() == pytest.approx(ce + beta_v * intra + beta_t * inter, rel=1e-5)


def test_dapt_loss_gradient_flows_through_every_weighted_term() -> None:
    logits, labels, images, text, prototypes = _batch()
    text = text.clone().requires_grad_(True)
    images = images.clone().requires_grad_(True)
    terms = dapt_loss(images @ text.t() * 100, labels, images, text, prototypes, beta_v=10.0, beta_t=1.0)
    terms.total.backward()
    assert text.grad is not None and text.grad.abs().sum() > 0
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_dapt_loss_single_class() -> None:
    logits = torch.tensor([[3.0], [1.0]])
    labels = torch.tensor([0, 0])
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8]])
    prototypes = torch.tensor([[0.5, 0.5]])
    terms = dapt_loss(logits, labels, images, text, prototypes, beta_v=2.0, beta_t=5.0)
    assert terms.ce.item() == pytest.approx(0.0, abs=1e-7)  # one class: softmax is 1
    assert terms.inter.item() == 0.0  # no class pairs
    assert terms.intra.item() == pytest.approx(0.25, rel=1e-6)  # all four squared errors are 0.25
    assert terms.total.item() == pytest.approx(0.5, rel=1e-6)


def test_dapt_loss_without_prototypes() -> None:
    logits, labels, images, text, _ = _batch()
    terms = dapt_loss(logits, labels, images, text, None, beta_v=0.0, beta_t=0.5)
    assert terms.intra.item() == 0.0
    assert terms.total.item() == pytest.approx(terms.ce.item() + 0.5 * terms.inter.item(), rel=1e-6)
    with pytest.raises(ValueError, match="beta_v > 0 needs class prototypes"):
        dapt_loss(logits, labels, images, text, None, beta_v=10.0, beta_t=0.5)
