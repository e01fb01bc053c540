"""Shared fixtures: an isolated environment for every test, a small synthetic data root and the tiny CLIP."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tiny import quiet_trainer
from torch import nn

from dapt_lightning.data.datasets.synthetic import FOLDER, write_synthetic_dataset
from dapt_lightning.model.clip import load_clip

SYNTHETIC_SIZES = {"train": 6, "val": 2, "test": 4}
"""Images per class and split in the shared synthetic data root (24 classes)."""


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Caches, W&B runs and Hugging Face downloads go to a per-test temp folder; W&B never goes online."""
    cache = tmp_path / "dapt-cache"
    monkeypatch.setenv("DAPT_CACHE_DIR", str(cache))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("DAPT_DATA_ROOT", raising=False)
    return cache


@pytest.fixture(autouse=True)
def method_registry():  # noqa: ANN201 - a generator fixture
    """A method a test registers (the README's own method, loaded from its checkpoint) is forgotten after it, so
    that every later test sees the built-in methods only."""
    from dapt_lightning.methods import registry

    saved = dict(registry._METHODS)
    yield
    registry._METHODS.clear()
    registry._METHODS.update(saved)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a small synthetic dataset (``--data.root`` / ``FewShotDataModule(root=...)``)."""
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(root / FOLDER, seed=0, image_size=64, sizes=SYNTHETIC_SIZES)
    return root


@pytest.fixture(scope="session")
def _tiny_clip_session() -> nn.Module:
    torch.manual_seed(0)
    clip, _ = load_clip("dapt-tiny", None)
    return clip


@pytest.fixture
def tiny_clip(_tiny_clip_session: nn.Module) -> nn.Module:
    """A frozen tiny CLIP (``dapt-tiny``, random weights, QuickGELU); a fresh copy per test."""
    return copy.deepcopy(_tiny_clip_session)


@pytest.fixture
def make_trainer(tmp_path: Path):
    """A factory of quiet CPU Trainers (``tiny.quiet_trainer``) writing under the test's temp folder."""
    return lambda **overrides: quiet_trainer(default_root_dir=str(tmp_path / "trainer"), **overrides)
