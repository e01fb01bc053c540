"""The baselines train from a dataset's config and the method's config of official settings, on generated data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fake_datasets import make_fake_dataset
from tiny import REPO, exit_status, run_cli

from dapt_lightning.methods.tip_adapter import search_grid

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


def test_tip_adapter_trains_from_the_pets_config_and_searches_alpha_beta_on_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "data"
    make_fake_dataset("oxford_pets", root)
    method_config = REPO / "configs/methods/tip_adapter.yaml"
    configs = ["--config", str(REPO / "configs/oxfordpets.yaml"), "--config", str(method_config)]
    run = tmp_path / "run"
    record = run_cli(["fit", *configs, *TINY, "--data.root", str(root), "--run.dir", str(run)])

    model = record.model
    assert type(model).__name__ == "TipAdapterF" and record.record["method"] == "tip_adapter"
    assert (model.hparams.lr, model.hparams.eps, record.datamodule.batch_size) == (0.001, 1e-4, 256)
    assert record.datamodule.train_crop_scale == (0.5, 1.0)
    train_images = len(record.datamodule.splits.train)
    assert model.cache_keys.shape == (train_images, 64) and model.cache_values.shape[0] == train_images
    # alpha and beta are the searched values (on the official pets grid), not the training values 1.17 and 1
    betas, alphas = search_grid(7.0, 200), search_grid(3.0, 20)
    assert float(model.beta) in [pytest.approx(b) for b in betas] and float(model.alpha) in [
        pytest.approx(a) for a in alphas
    ]
    assert 0 <= record.record["test"]["test/acc"] <= 1
    stored = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(stored) == {"cache_keys", "cache_values", "alpha", "beta"}  # the cache, no CLIP weights
    torch.testing.assert_close(stored["alpha"], model.alpha)  # the checkpoint holds the searched values

    checkpoint = str(run / "checkpoints" / "last.ckpt")
    tested = run_cli(["test", "--ckpt_path", checkpoint, "--data.num_workers", "0"])
    assert tested.record["test"]["test/acc"] == record.record["test"]["test/acc"]

    # Another dataset's classes: refused in one line, before any test runs
    make_fake_dataset("dtd", root)
    other = ["test", "--ckpt_path", checkpoint, "--data.dataset", "dtd", "--data.root", str(root)]
    other += ["--run.dir", str(tmp_path / "dtd"), "--data.num_workers", "0"]
    assert exit_status(other) == 1
    assert "TipAdapterF classifies only the" in capsys.readouterr().err


def test_linear_probe_fits_in_one_epoch_from_cached_features(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    make_fake_dataset("oxford_pets", root)
    monkeypatch.setenv("DAPT_CACHE_DIR", str(tmp_path / "cache"))
    method_config = REPO / "configs/methods/linear_probe.yaml"
    configs = ["--config", str(REPO / "configs/oxfordpets.yaml"), "--config", str(method_config)]
    run = tmp_path / "run"
    record = run_cli(["fit", *configs, *TINY, "--data.root", str(root), "--run.dir", str(run)])

    model = record.model
    assert type(model).__name__ == "LinearProbe" and record.trainer.current_epoch == 1  # one epoch, not two
    assert model.fitted and float(model.inverse_regularisation) > 0
    cached = sorted(p.name.split("-")[1] for p in (tmp_path / "cache" / "features").iterdir())
    assert cached == ["train", "val"]  # what the search read; the test encodes its images through the model
    stored = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(stored) == {"head.weight", "head.bias", "inverse_regularisation"}
    assert stored["head.weight"].abs().sum() > 0


def test_clip_lora_trains_for_its_step_count_and_keeps_only_the_adapters(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_fake_dataset("oxford_pets", root)
    configs = [
        "--config",
        str(REPO / "configs/oxfordpets.yaml"),
        "--config",
        str(REPO / "configs/methods/clip_lora.yaml"),
    ]
    run = tmp_path / "run"
    quick = ["--model.iterations_per_shot", "1", "--data.num_shots", "2", "--data.batch_size", "8"]
    record = run_cli(
        ["fit", *configs, *TINY, "--trainer.max_epochs", "-1", *quick, "--data.root", str(root), "--run.dir", str(run)]
    )

    model = record.model
    assert type(model).__name__ == "CLIPLoRA" and record.record["method"] == "clip_lora"
    assert (model.hparams.rank, model.hparams.alpha, model.hparams.dropout, model.hparams.lr) == (2, 1.0, 0.25, 2e-4)
    assert record.trainer.global_step == 2  # iterations_per_shot x shots, then it stops (no epoch limit)
    assert 0 <= record.record["test"]["test/acc"] <= 1
    stored = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert stored and all(key.startswith("lora.") for key in stored)  # the adapters, no CLIP weights
    assert any(value.abs().sum() > 0 for key, value in stored.items() if key.endswith(".B"))  # B left zero: it trained

    # Base-to-new: the adapters are class-agnostic, so the checkpoint tests on the dataset's other classes
    new = run_cli(["test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--data.subsample", "new"])
    assert new.datamodule.hparams.subsample == "new" and 0 <= new.record["test"]["test/acc"] <= 1


def test_tip_adapter_trains_the_datasets_official_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    make_fake_dataset("eurosat", root)
    monkeypatch.setattr("dapt_lightning.methods.tip_adapter.OFFICIAL_EPOCHS", {"eurosat": 3})  # 100, shortened
    method_config = REPO / "configs/methods/tip_adapter.yaml"
    configs = ["--config", str(REPO / "configs/eurosat.yaml"), "--config", str(method_config)]
    quick = ["--data.num_shots", "2", "--model.augment_views", "1", "--trainer.check_val_every_n_epoch", "1"]
    quick += ["--model.clip_name", "dapt-tiny", "--model.pretrained", "null", "--data.num_workers", "0"]
    quick += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--run.test_after_fit", "false"]
    record = run_cli(["fit", *configs, *quick, "--data.root", str(root), "--run.dir", str(tmp_path / "run")])
    assert record.trainer.max_epochs == -1 and record.trainer.current_epoch == 3  # the method's epochs, then stop
    scheduler = record.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.T_max == 3 * len(record.datamodule.train_dataloader())  # the cosine ends with the last step


def test_tip_adapters_official_selection_reads_the_test_split_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dapt_lightning.methods import tip_adapter

    root = tmp_path / "data"
    make_fake_dataset("oxford_pets", root)
    read: list[str] = []
    frozen = tip_adapter.frozen_features

    def recorded(method, datamodule, split, **kwargs):  # noqa: ANN001, ANN202 - the wrapped function's own
        read.append(split)
        return frozen(method, datamodule, split, **kwargs)

    monkeypatch.setattr(tip_adapter, "frozen_features", recorded)
    method_config = REPO / "configs/methods/tip_adapter.yaml"
    configs = ["--config", str(REPO / "configs/oxfordpets.yaml"), "--config", str(method_config)]
    quick = [*TINY, "--model.augment_views", "1", "--run.test_after_fit", "false", "--data.root", str(root)]

    run_cli(["fit", *configs, *quick, "--run.dir", str(tmp_path / "validation")])
    assert "test" not in read and read.count("val") == 1  # the search; the epochs were scored by the validation loop
    read.clear()
    run_cli(["fit", *configs, *quick, "--model.selection", "official", "--run.dir", str(tmp_path / "official")])
    assert read.count("test") == 2 and read.count("val") == 1  # each of the 2 epochs scored on test; the search on val


@pytest.mark.slow
def test_every_method_trains_from_the_pets_config_with_model_alone(tmp_path: Path) -> None:
    """`dapt fit --config configs/oxfordpets.yaml --model M` for every trainable M (zero-shot CLIP trains nothing)."""
    from dapt_lightning.methods import ZeroShotCLIP, list_methods, method_class

    root = tmp_path / "data"
    make_fake_dataset("oxford_pets", root)
    quick = [*TINY, "--trainer.max_epochs", "1", "--data.num_shots", "1", "--data.batch_size", "8"]
    quick += ["--run.test_after_fit", "false", "--embedding_plots.enabled", "false", "--data.root", str(root)]
    trainable = [method_class(name) for name in list_methods() if not issubclass(method_class(name), ZeroShotCLIP)]
    assert len(trainable) == len(list_methods()) - 1
    for method in trainable:
        name = method.__name__
        run = tmp_path / name
        record = run_cli(
            ["fit", "--config", str(REPO / "configs/oxfordpets.yaml"), "--model", name, *quick, "--run.dir", str(run)]
        )
        assert type(record.model) is method and (run / "checkpoints" / "last.ckpt").is_file(), name
