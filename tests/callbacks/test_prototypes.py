"""PrototypeCallback: values against a direct per-image computation, and its on-disk cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import quiet_trainer

from dapt_lightning.callbacks.prototypes import PrototypeCallback
from dapt_lightning.data.datamodule import FewShotDataModule
from dapt_lightning.data.image_dataset import seeded_views
from dapt_lightning.methods import DAPT


def make_data(root: Path, num_shots: int = 2, seed: int = 1) -> FewShotDataModule:
    return FewShotDataModule(
        "synthetic", root=str(root), num_shots=num_shots, seed=seed, batch_size=8, num_workers=0, image_size=64
    )


def make_module(classnames: list[str], clip_seed: int = 0) -> DAPT:
    torch.manual_seed(clip_seed)  # random tiny-CLIP weights: the same seed gives the same CLIP
    return DAPT(classnames=classnames, clip_name="dapt-tiny", pretrained=None)


def fit_prototypes(module: DAPT, data: FewShotDataModule, callback: PrototypeCallback, root_dir: Path) -> torch.Tensor:
    """Run the callback inside a real ``Trainer.fit`` (training itself skipped) and return the prototypes."""
    trainer = quiet_trainer(limit_train_batches=0, limit_val_batches=0, callbacks=[callback], default_root_dir=root_dir)
    trainer.fit(module, datamodule=data)
    assert module.has_prototypes
    return module.prototypes.clone()


@torch.no_grad()
def direct_prototypes(module: DAPT, data: FewShotDataModule, transform: str, seed: int) -> torch.Tensor:
    """Per-class mean of the L2-normalised zero-shot features of one seeded view per image."""
    views = seeded_views(data.dataset("train", transform=transform), seed)
    images, labels, _ = zip(*(views[index] for index in range(len(views))), strict=True)
    features = F.normalize(module.model.clip.encode_image(torch.stack(images)), dim=-1).double()
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for feature, label in zip(features, labels, strict=True):
        sums[label] = sums.get(label, 0) + feature
        counts[label] = counts.get(label, 0) + 1
    return torch.stack([sums[c] / counts[c] for c in range(len(data.classnames))]).float()


@pytest.mark.parametrize("transform", ["train", "test"])
def test_prototypes_match_direct_computation(synthetic_root: Path, tmp_path: Path, transform: str) -> None:
    data = make_data(synthetic_root)
    module = make_module(data.classnames)
    callback = PrototypeCallback(transform=transform, use_cache=False, batch_size=7)  # batches cross classes
    prototypes = fit_prototypes(module, data, callback, tmp_path)
    assert callback.last_source == "computed"
    assert prototypes.shape == (24, 64)
    expected = direct_prototypes(module, data, transform, seed=data.seed)
    torch.testing.assert_close(prototypes, expected, rtol=1e-5, atol=1e-6)
    # The mean of unit vectors, not re-normalised: at most 1, and clearly below it where a class's views differ
    # (random CLIP weights map many views to nearly one feature, so not for every class).
    norms = prototypes.norm(dim=-1)
    assert (norms <= 1 + 1e-6).all() and norms.min() < 1 - 1e-3


def test_train_views_are_seeded_and_augmented(synthetic_root: Path) -> None:
    data = make_data(synthetic_root)
    train = seeded_views(data.dataset("train", transform="train"), seed=1)
    assert torch.equal(train[3][0], train[3][0])  # the same view every time: independent of call order
    assert not torch.equal(train[3][0], seeded_views(data.dataset("train", transform="train"), seed=2)[3][0])
    assert not torch.equal(train[3][0], data.dataset("train", transform="test")[3][0])


def test_cache_hit_and_invalidation(synthetic_root: Path, tmp_path: Path, isolated_env: Path) -> None:
    data = make_data(synthetic_root)
    first = PrototypeCallback()
    reference = fit_prototypes(make_module(data.classnames), data, first, tmp_path)
    assert first.last_source == "computed"
    cache_files = list((isolated_env / "prototypes").glob("*.safetensors"))  # under $DAPT_CACHE_DIR
    assert len(cache_files) == 1

    again = PrototypeCallback()
    assert torch.equal(fit_prototypes(make_module(data.classnames), data, again, tmp_path), reference)
    assert again.last_source == "cache"

    changed = {
        "shots": (make_data(synthetic_root, num_shots=1), 0, PrototypeCallback()),
        "few-shot seed": (make_data(synthetic_root, seed=2), 0, PrototypeCallback()),
        "augmentation seed": (data, 0, PrototypeCallback(seed=5)),
        "transform": (data, 0, PrototypeCallback(transform="test")),
        "CLIP weights": (data, 1, PrototypeCallback()),
    }
    for what, (other_data, clip_seed, callback) in changed.items():
        values = fit_prototypes(make_module(other_data.classnames, clip_seed), other_data, callback, tmp_path)
        assert callback.last_source == "computed", what
        assert not torch.allclose(values, reference), what
    assert len(list((isolated_env / "prototypes").glob("*.safetensors"))) == 1 + len(changed)


@pytest.mark.parametrize("damage", ["flip_bytes", "truncate"])
def test_corrupt_cache_is_rebuilt(synthetic_root: Path, tmp_path: Path, damage: str) -> None:
    data = make_data(synthetic_root)
    cache_dir = tmp_path / "cache"
    reference = fit_prototypes(
        make_module(data.classnames), data, PrototypeCallback(cache_dir=str(cache_dir)), tmp_path
    )
    (path,) = cache_dir.glob("*.safetensors")
    raw = bytearray(path.read_bytes())
    if damage == "flip_bytes":
        raw[-16:] = bytes(b ^ 0xFF for b in raw[-16:])  # tensor data at the end: the header still parses
    else:
        raw = raw[: len(raw) // 2]
    path.write_bytes(bytes(raw))

    callback = PrototypeCallback(cache_dir=str(cache_dir))
    rebuilt = fit_prototypes(make_module(data.classnames), data, callback, tmp_path)
    assert callback.last_source == "computed"
    torch.testing.assert_close(rebuilt, reference, rtol=0, atol=0)

    reread = PrototypeCallback(cache_dir=str(cache_dir))
    assert torch.equal(fit_prototypes(make_module(data.classnames), data, reread, tmp_path), reference)
    assert reread.last_source == "cache"


def test_prototypes_from_a_checkpoint_are_kept(synthetic_root: Path, tmp_path: Path) -> None:
    data = make_data(synthetic_root)
    module = make_module(data.classnames)
    module.set_prototypes(torch.full((24, 64), 0.5))
    callback = PrototypeCallback(use_cache=False)
    kept = fit_prototypes(module, data, callback, tmp_path)
    assert callback.last_source == ""  # never computed nor read from the cache
    assert torch.equal(kept, torch.full((24, 64), 0.5))
