"""The baselines train from a dataset's config and the method's config of official settings, on generated data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fake_datasets import make_fake_dataset
from tiny import REPO, run_cli

# ViT-B/16 on the real dataset becomes the tiny CLIP on a fake one; two epochs of the method's own settings.
TINY = ["--model.clip_name", "dapt-tiny", "--model.pretrained", "null", "--trainer.max_epochs", "2"]
TINY += ["--data.num_workers", "0", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


def test_kgcoop_trains_from_the_pets_config_and_its_official_settings(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_fake_dataset("oxford_pets", root)
    configs = ["--config", str(REPO / "configs/oxfordpets.yaml"), "--config", str(REPO / "configs/methods/kgcoop.yaml")]
    run = tmp_path / "run"
    record = run_cli(["fit", *configs, *TINY, "--data.root", str(root), "--run.dir", str(run)])

    model = record.model
    assert type(model).__name__ == "KgCoOp" and record.record["method"] == "kgcoop"
    settings = model.hparams
    assert (settings.lr, settings.kg_weight, settings.text_init) == (0.002, 8.0, "a photo of a")
    assert record.datamodule.batch_size == 128 and "beta_v" not in settings  # DAPT's weights were dropped
    assert settings.template == "a photo of a {}, a type of pet."  # the dataset's template guides the context
    fit = record.record["fit"]  # the last epoch's logged training terms (metrics.json)
    assert fit["train/loss"] == pytest.approx(fit["train/loss_ce"] + 8.0 * fit["train/loss_kg"], rel=1e-5)
    assert fit["train/loss_kg"] > 0
    assert 0 <= record.record["test"]["test/acc"] <= 1
    stored = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(stored) == {"model.text_prompt.txt_ctx"} and stored["model.text_prompt.txt_ctx"].shape == (4, 64)


def test_cocoop_trains_from_the_pets_config_and_its_official_settings(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_fake_dataset("oxford_pets", root)
    configs = ["--config", str(REPO / "configs/oxfordpets.yaml"), "--config", str(REPO / "configs/methods/cocoop.yaml")]
    run = tmp_path / "run"
    record = run_cli(["fit", *configs, *TINY, "--data.root", str(root), "--run.dir", str(run)])

    model = record.model
    assert type(model).__name__ == "CoCoOp" and record.record["method"] == "cocoop"
    assert (model.hparams.lr, model.hparams.text_init, record.datamodule.batch_size) == (0.002, "a photo of a", 1)
    assert 0 <= record.record["test"]["test/acc"] <= 1
    stored = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    meta = {f"meta_net.{name}" for name in model.meta_net.state_dict()}
    assert set(stored) == {"model.text_prompt.txt_ctx"} | meta  # the context and the meta-net, no CLIP weights
    initial = model.model.text_tower.embed_tokens(model.model.text_tower.tokenize(["a photo of a"]))[0, 1:5]
    assert not torch.allclose(stored["model.text_prompt.txt_ctx"], initial)  # it trained
