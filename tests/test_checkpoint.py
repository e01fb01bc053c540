"""Prompt-only checkpoints: exact round trip of prompts and prototypes, no CLIP weights stored, CLIP checks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import save_file
from tiny import quiet_trainer

from dapt_lightning.callbacks.prototypes import PrototypeCallback
from dapt_lightning.data.datamodule import FewShotDataModule
from dapt_lightning.methods import DAPT, CLIPMethod, CoOpVPT
from dapt_lightning.model.clip import load_clip

PROMPT_KEYS = {"model.text_prompt.txt_ctx", "model.visual_prompt.vis_ctx", "prototypes", "prototypes_ready"}


def _trainer(root_dir: Path, **overrides: object) -> L.Trainer:
    return quiet_trainer(default_root_dir=root_dir, limit_train_batches=2, limit_val_batches=0, **overrides)


def _save_clip(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    clip, _ = load_clip("dapt-tiny", None)
    save_file(clip.state_dict(), str(path))
    return str(path)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two tiny-CLIP weight files of the same architecture with different weights."""
    folder = tmp_path_factory.mktemp("clip")
    return _save_clip(folder / "a.safetensors", 0), _save_clip(folder / "b.safetensors", 1)


def _data(root: Path) -> FewShotDataModule:
    return FewShotDataModule(
        "synthetic", root=str(root), num_shots=1, batch_size=8, test_batch_size=50, num_workers=0, image_size=64
    )


@pytest.fixture(scope="module")
def trained(
    synthetic_root: Path, clip_files: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, DAPT]:
    """One short DAPT fit on CLIP file ``a``; returns the saved checkpoint and the trained module."""
    folder = tmp_path_factory.mktemp("trained")
    data = _data(synthetic_root)
    torch.manual_seed(0)
    module = DAPT(classnames=data.classnames, clip_name="dapt-tiny", pretrained=clip_files[0], lr=0.5)
    callbacks = [PrototypeCallback(cache_dir=str(folder / "cache"))]
    trainer = _trainer(folder, callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    path = folder / "dapt.ckpt"
    trainer.save_checkpoint(path)
    return path, module


def test_checkpoint_holds_prompts_and_prototypes_only(trained: tuple[Path, DAPT]) -> None:
    path, module = trained
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["state_dict"]
    assert set(state) == PROMPT_KEYS
    assert not any(key.startswith("model.clip.") for key in state)
    # No CLIP tensor under another name either (the tower views share CLIP's modules).
    stored = sum(value.numel() for value in state.values())
    assert stored == 16 * 64 + 16 * 128 + 24 * 64 + 1
    assert checkpoint["clip_identity"]["weights_sha256"] == module.clip_identity.weights_sha256
    assert checkpoint["clip_identity"]["source"] == "open_clip-state-dict"  # what the loader found in the file
    assert checkpoint["classnames"] == module.model.classnames


def test_load_from_checkpoint_round_trips_exactly(trained: tuple[Path, DAPT]) -> None:
    path, module = trained
    loaded = DAPT.load_from_checkpoint(path, map_location="cpu")
    assert torch.equal(loaded.model.text_prompt.txt_ctx, module.model.text_prompt.txt_ctx)
    assert torch.equal(loaded.model.visual_prompt.vis_ctx, module.model.visual_prompt.vis_ctx)
    assert torch.equal(loaded.prototypes, module.prototypes)
    assert bool(loaded.prototypes_ready)
    assert loaded.prototypes.abs().sum() > 0
    trained_clip = module.model.clip.state_dict()
    for name, tensor in loaded.model.clip.state_dict().items():
        assert torch.equal(tensor, trained_clip[name]), name
    # The prompts were trained: they differ from a fresh initialisation with the same seed.
    torch.manual_seed(0)
    fresh = DAPT(classnames=module.model.classnames, clip_name="dapt-tiny", pretrained=module.hparams.pretrained)
    assert not torch.equal(fresh.model.text_prompt.txt_ctx, loaded.model.text_prompt.txt_ctx)


def test_trainer_test_with_ckpt_path(
    trained: tuple[Path, DAPT], synthetic_root: Path, clip_files: tuple[str, str], tmp_path: Path
) -> None:
    path, module = trained
    data = _data(synthetic_root)
    expected = _trainer(tmp_path).test(module, datamodule=data, verbose=False)[0]["test/acc"]

    torch.manual_seed(123)  # other prompt initialisations, replaced by the checkpoint's
    fresh = DAPT(classnames=data.classnames, clip_name="dapt-tiny", pretrained=clip_files[0])
    results = _trainer(tmp_path).test(fresh, datamodule=_data(synthetic_root), ckpt_path=str(path), verbose=False)
    assert torch.equal(fresh.model.text_prompt.txt_ctx, module.model.text_prompt.txt_ctx)
    assert torch.equal(fresh.model.visual_prompt.vis_ctx, module.model.visual_prompt.vis_ctx)
    assert torch.equal(fresh.prototypes, module.prototypes)
    assert results[0]["test/acc"] == pytest.approx(expected, abs=1e-7)


def test_loading_with_another_clip_is_an_error(trained: tuple[Path, DAPT], clip_files: tuple[str, str]) -> None:
    path, _ = trained
    with pytest.raises(ValueError, match=r"weights sha256.*--model.clip_name/--model.pretrained"):
        DAPT.load_from_checkpoint(path, map_location="cpu", pretrained=clip_files[1])


def test_loading_with_another_activation_is_an_error(trained: tuple[Path, DAPT]) -> None:
    # Same weights, but plain GELU instead of the QuickGELU the prompts were trained with: other features.
    path, _ = trained
    with pytest.raises(ValueError, match="quick_gelu"):
        DAPT.load_from_checkpoint(path, map_location="cpu", quick_gelu=False)


def _as_format_1(checkpoint: dict, method: str) -> dict:
    """A checkpoint as the single-module era wrote it: the method a name among the hyperparameters, unset dispersion
    weights None, DAPT's prototype buffers kept for every method."""
    old = dict(checkpoint, dapt_checkpoint_format=1)
    old.pop("method")
    settings = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    old["hyper_parameters"] = {**settings, "method": method, "beta_v": None, "beta_t": None, "template": None}
    return old


def test_checkpoints_from_before_methods_were_classes_load_as_their_method(
    trained: tuple[Path, DAPT], tmp_path: Path
) -> None:
    path, module = trained
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["dapt_checkpoint_format"] == 2
    assert checkpoint["method"] == {"name": "dapt", "class_path": "dapt_lightning.methods.dapt.DAPT"}

    torch.save(_as_format_1(checkpoint, "dapt"), tmp_path / "old_dapt.ckpt")
    loaded = CLIPMethod.load_from_checkpoint(tmp_path / "old_dapt.ckpt")
    assert type(loaded) is DAPT and (loaded.hparams.beta_v, loaded.hparams.beta_t) == (10.0, 0.01)  # old defaults
    assert torch.equal(loaded.model.text_prompt.txt_ctx, module.model.text_prompt.txt_ctx)
    assert torch.equal(loaded.prototypes, module.prototypes)

    # A CoOp+VPT checkpoint of then held the same tensors, prototypes included; it loads without them.
    torch.save(_as_format_1(checkpoint, "coop_vpt"), tmp_path / "old_coop_vpt.ckpt")
    baseline = CLIPMethod.load_from_checkpoint(tmp_path / "old_coop_vpt.ckpt")
    assert type(baseline) is CoOpVPT and not hasattr(baseline, "prototypes")
    assert torch.equal(baseline.model.visual_prompt.vis_ctx, module.model.visual_prompt.vis_ctx)
    with pytest.raises(ValueError, match="holds a CoOpVPT checkpoint, not a DAPT"):
        DAPT.load_from_checkpoint(tmp_path / "old_coop_vpt.ckpt")
