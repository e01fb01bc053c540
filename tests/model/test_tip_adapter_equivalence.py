"""Tip-Adapter-F against a re-statement of the official computation (gaopengcuhk/Tip-Adapter ``main.py``,
``utils.py``), in fp32.

The reference is written with open_clip's primitives only: ``clip_classifier`` (each prompt's normalised text
features averaged over the template list, normalised again), the cache keys (the mean of ``encode_image`` over the
augmented views, normalised), the cache logits ``exp(-(beta - beta * f K^T)) V``, ``100 f W + alpha * cache``,
cross-entropy, and ``search_hp``'s loops over beta and alpha. The method under test is built from a weights file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from fake_datasets import make_fake_dataset
from PIL import Image
from torch import nn

from dapt_lightning.data.datamodule import FewShotDataModule
from dapt_lightning.data.image_dataset import seeded_views
from dapt_lightning.methods import TipAdapterF
from dapt_lightning.methods.tip_adapter import search_grid

CLASSNAMES = ["cat", "american_bulldog", "sea or lake", "a rather long class name with many words", "x"]
TEMPLATES = ["a photo of a {}, a type of pet.", "itap of a {}."]


def clip_classifier(clip: nn.Module, templates: list[str]) -> torch.Tensor:
    """``utils.clip_classifier``: ``[D, C]``."""
    weights = []
    for name in CLASSNAMES:
        texts = open_clip.tokenize([t.format(name.replace("_", " ")) for t in templates])
        embeddings = clip.encode_text(texts)
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        embedding = embeddings.mean(dim=0)
        weights.append(embedding / embedding.norm())
    return torch.stack(weights, dim=1)


def official_logits(clip, images, keys, values, clip_weights, alpha, beta) -> tuple[torch.Tensor, torch.Tensor]:
    """``run_tip_adapter_F``'s training forward: the normalised image features and ``tip_logits``."""
    with torch.no_grad():
        features = clip.encode_image(images)
        features = features / features.norm(dim=-1, keepdim=True)
    affinity = features @ keys.t()  # nn.Linear(D, NK) whose weight is cache_keys.t() ([NK, D])
    cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
    clip_logits = 100.0 * features @ clip_weights
    return features, clip_logits + cache_logits * alpha


def official_search(features, labels, keys, values, clip_weights, scale, steps) -> tuple[float, float]:
    """``utils.search_hp`` with an adapter: the loops as written, accuracy as ``cls_acc`` computes it."""
    beta_list = [i * (scale[0] - 0.1) / steps[0] + 0.1 for i in range(steps[0])]
    alpha_list = [i * (scale[1] - 0.1) / steps[1] + 0.1 for i in range(steps[1])]
    best_acc, best_beta, best_alpha = 0, 0, 0
    for beta in beta_list:
        for alpha in alpha_list:
            affinity = features @ keys.t()
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
            clip_logits = 100.0 * features @ clip_weights
            tip_logits = clip_logits + cache_logits * alpha
            acc = 100 * float((tip_logits.topk(1, 1)[1].t() == labels.view(1, -1)).sum()) / labels.shape[0]
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha


@pytest.fixture(scope="module")
def method(clip_file) -> TipAdapterF:
    _, path = clip_file
    return TipAdapterF(classnames=CLASSNAMES, clip_name="dapt-tiny", pretrained=str(path), template=TEMPLATES)


def random_cache(dim: int, per_class: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(per_class * len(CLASSNAMES), dim, generator=generator), dim=-1)
    labels = torch.arange(len(CLASSNAMES)).repeat_interleave(per_class)
    return keys, F.one_hot(labels, len(CLASSNAMES)).float()


def install_cache(method: TipAdapterF, keys: torch.Tensor, values: torch.Tensor, alpha: float, beta: float) -> None:
    method.cache_keys = nn.Parameter(keys.clone())
    method.cache_values = values.clone()
    method.alpha.fill_(alpha)
    method.beta.fill_(beta)


def test_forward_loss_and_gradients_equal_the_official_computation(clip_file, method: TipAdapterF) -> None:
    clip, _ = clip_file
    clip_weights = clip_classifier(clip, TEMPLATES)
    torch.testing.assert_close(method.zero_shot_text, clip_weights.t(), rtol=1e-5, atol=1e-6)  # the ensemble

    generator = torch.Generator().manual_seed(4)
    images = torch.randn(6, 3, 64, 64, generator=generator)
    _, values = random_cache(clip_weights.shape[0])
    with torch.no_grad():  # keys as a real cache's: features of other images of the same kind
        keys = F.normalize(clip.encode_image(torch.randn(values.shape[0], 3, 64, 64, generator=generator)), dim=-1)
    alpha, beta = 3.0, 5.5
    install_cache(method, keys, values, alpha, beta)
    labels = torch.tensor([0, 3, 1, 4, 2, 2])
    ref_keys = keys.clone().requires_grad_(True)
    features, expected = official_logits(clip, images, ref_keys, values, clip_weights, alpha, beta)

    logits, image_features, _ = method.forward_features(images)
    torch.testing.assert_close(image_features, features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    cache_part = method.logit_parts(image_features, beta)[1]
    assert cache_part.abs().max() > 0.05 * expected.abs().max()  # the cache is not negligible here
    ce = method.loss(logits, labels, image_features, method.zero_shot_text)["ce"]
    reference_ce = F.cross_entropy(expected, labels)
    assert ce.item() == pytest.approx(reference_ce.item(), rel=1e-5)
    (ours,) = torch.autograd.grad(ce, [method.cache_keys])
    (theirs,) = torch.autograd.grad(reference_ce, [ref_keys])
    torch.testing.assert_close(ours, theirs, rtol=5e-5, atol=5e-5 * theirs.abs().max().item())


def test_the_search_picks_the_official_beta_and_alpha(clip_file, method: TipAdapterF) -> None:
    clip, _ = clip_file
    clip_weights = clip_classifier(clip, TEMPLATES)
    keys, values = random_cache(clip_weights.shape[0], seed=1)
    install_cache(method, keys, values, 1.0, 1.0)
    generator = torch.Generator().manual_seed(5)
    # Validation features near the keys (so that the cache helps by different amounts along the grid)
    features = F.normalize(keys.repeat(3, 1) + 0.9 * torch.randn(3 * keys.shape[0], keys.shape[1], generator=generator))
    labels = values.argmax(dim=-1).repeat(3)
    for scale, steps in (((7.0, 3.0), (40, 10)), ((13.0, 13.0), (25, 8))):
        method.hparams.search_steps = steps
        beta, alpha, accuracy = method.search(features, labels, scale)
        expected = official_search(features, labels, keys, values, clip_weights, scale, steps)
        assert (beta, alpha) == expected
        assert beta in search_grid(scale[0], steps[0]) and 0 < accuracy < 1  # not the degenerate all-wrong case


def test_the_cache_keys_are_the_normalised_mean_over_augmented_views(clip_file, tmp_path: Path, monkeypatch) -> None:
    clip, path = clip_file
    monkeypatch.setenv("DAPT_CACHE_DIR", str(tmp_path / "cache"))
    make_fake_dataset("oxford_pets", tmp_path / "data")
    rng = np.random.default_rng(0)
    for image in (tmp_path / "data").rglob("*.jpg"):  # textured, so that crops and flips change what is seen
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(image)
    datamodule = FewShotDataModule("oxford_pets", str(tmp_path / "data"), num_shots=2, num_workers=0)
    method = TipAdapterF(clip_name="dapt-tiny", pretrained=str(path), augment_views=3)
    datamodule.follow(method)
    datamodule.setup("fit")
    method._build(datamodule.classnames)
    datamodule.follow(method)

    keys, labels = method.build_cache(datamodule)
    train = datamodule.dataset("train", transform="train")
    views = []
    for view in range(3):
        dataset = seeded_views(train, datamodule.seed * 1000 + 1 + view)
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        with torch.no_grad():
            views.append(clip.encode_image(images).unsqueeze(0))
    expected = torch.cat(views, dim=0).mean(dim=0)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(keys, expected, rtol=1e-5, atol=1e-6)
    assert labels.tolist() == [item.label for item in datamodule.splits.train]
    assert not torch.allclose(views[0], views[1])  # the views differ: each is its own augmentation

    cached = sorted((tmp_path / "cache" / "features").iterdir())
    assert [p.name.split("-")[1] for p in cached] == ["train", "train", "train"]  # one file per view
    again, _ = method.build_cache(datamodule)  # read back from the cache
    torch.testing.assert_close(again, keys, rtol=0, atol=0)


def test_a_checkpoint_cannot_classify_other_classes(method: TipAdapterF) -> None:
    with pytest.raises(ValueError, match="TipAdapterF classifies only the 5 classes it was trained on"):
        method.retargeted(["dog", "cat"])
