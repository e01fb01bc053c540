"""The experiment workflow: W&B records read back from an offline run, prompt-only checkpoints, cross-dataset
`dapt test`, per-dataset zero-shot templates, the notebook and its helpers."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import REPO, SIZES, SUBSET_LABELS, run_cli, tiny_args, write_subset_dataset
from wandb_records import OfflineRun

from dapt_lightning.callbacks.evaluation import mean_pairwise_cosine
from dapt_lightning.checkpoint import ClipMismatchError
from dapt_lightning.data import registry
from dapt_lightning.data.datasets.synthetic import FOLDER, write_synthetic_dataset
from dapt_lightning.data.registry import dataset_template, get_dataset, list_datasets
from dapt_lightning.data.synthetic_render import class_names
from dapt_lightning.methods import DAPT, ZeroShotCLIP
from dapt_lightning.model.clip import load_clip

WANDB_LOGGER = ["--trainer.logger", "dapt_lightning.loggers.DAPTWandbLogger"]


def workflow_args(root: Path, run_dir: Path, weights: Path, *extra: str) -> list[str]:
    """The tiny run with a fixed random CLIP (``weights``: every load rebuilds the same one), 1 shot."""
    return tiny_args(root, run_dir, "--model.pretrained", str(weights), "--data.num_shots", "1", *extra)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-data")
    write_synthetic_dataset(root / FOLDER, seed=0, image_size=64, sizes=SIZES)
    return root


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random dapt-tiny CLIP saved as a weights file, so that every load rebuilds the same CLIP."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    clip, _ = load_clip("dapt-tiny", None)
    path = tmp_path_factory.mktemp("weights") / "dapt-tiny-random.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def trained_run(tiny_root: Path, tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-epoch DAPT fit (validating every epoch) + test, logged to an offline W&B run; returns the run folder."""
    base = tmp_path_factory.mktemp("trained")
    run_dir = base / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAPT_CACHE_DIR", str(base / "cache"))
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(base / "wandb"))
        patch.setenv("WANDB_SILENT", "true")
        args = workflow_args(
            tiny_root,
            run_dir,
            tiny_weights,
            *WANDB_LOGGER,
            "--trainer.max_epochs",
            "2",
            "--trainer.check_val_every_n_epoch",
            "1",
            "--run.test_after_fit",
            "true",
            "--embedding_plots.enabled",
            "true",
            "--embedding_plots.max_images",
            "40",
        )
        cli = run_cli(["fit", *args])
        cli.trainer.logger.experiment.finish()  # flush the offline run's records to disk
    return run_dir


@pytest.mark.slow
def test_offline_wandb_run_records_the_experiment(trained_run: Path, tiny_root: Path) -> None:
    (wandb_dir,) = (trained_run / "wandb").glob("offline-run-*")
    run = OfflineRun(wandb_dir)

    # Named and grouped by dataset, method, shots and seed.
    assert run.run.display_name == "synthetic-dapt-1shots-seed1"
    assert run.run.run_group == "synthetic-dapt-1shots"
    assert {"synthetic", "dapt", "1shots", "seed1"} <= set(run.run.tags)

    # The resolved config (every setting, incl. the data root), transforms, versions and git revision.
    config = run.config["config"]["value"] if "value" in run.config["config"] else run.config["config"]
    assert config["data"]["root"] == str(tiny_root)
    assert config["model"]["init_args"]["beta_v"] == 10.0 and config["trainer"]["max_epochs"] == 2
    resolved = run.config["resolved"].get("value", run.config["resolved"])
    assert set(resolved["versions"]) >= {"torch", "lightning", "open_clip", "dapt_lightning"}
    assert "RandomResizedCrop" in resolved["data"]["transforms"]["train"]
    assert "CenterCrop" in resolved["data"]["transforms"]["test"]
    assert Path(resolved["data"]["root"]).is_dir()
    assert "commit" in resolved["git"]

    # Every loss term, the learning rate, accuracy and macro-F1 of every stage.
    for key in (
        "train/loss_epoch",
        "train/loss_ce_epoch",
        "train/loss_inter_epoch",
        "train/loss_intra_epoch",
        "train/lr",
        "train/acc_epoch",
        "train/macro_f1",
        "val/acc",
        "val/macro_f1",
        "test/acc",
        "test/macro_f1",
    ):
        assert key in run.summary, key
    # The dispersion measures, once per validation (2 epochs) and at test.
    for name in ("text_mean_cosine", "image_dist_to_prototype", "image_sqdist_to_class_mean"):
        values = run.series(f"val/dispersion/{name}")
        assert len(values) == 2 and all(isinstance(v, int | float) for v in values), name
        assert f"test/dispersion/{name}" in run.summary
    # The last validation measured the final prompts: recompute its text measure from the checkpoint.
    final = DAPT.load_from_checkpoint(trained_run / "checkpoints" / "last.ckpt", map_location="cpu")
    with torch.no_grad():
        expected_cosine = mean_pairwise_cosine(final.model.encode_text())
    assert run.summary["val/dispersion/text_mean_cosine"] == pytest.approx(expected_cosine, rel=1e-5)

    # Per-class test accuracy as a table: one row per class, matching the CSV written beside the run.
    (table_file,) = run.media("table/test/per_class_accuracy_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["label", "class", "accuracy", "correct", "images"]
    assert len(table["data"]) == 24 and all(row[4] == SIZES["test"] for row in table["data"])
    with open(trained_run / "per_class_test_accuracy.csv") as handle:
        csv_rows = list(csv.DictReader(handle))
    overall = sum(int(r["correct"]) for r in csv_rows) / sum(int(r["images"]) for r in csv_rows)
    assert overall == pytest.approx(run.summary["test/acc"], abs=1e-6)

    # t-SNE figures: PNG files in the run folder, and images in the W&B run.
    for key in ("tsne_text", "tsne_image"):
        png = trained_run / "figures" / f"{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert run.media(f"images/embeddings/{key}_*.png"), key


@pytest.mark.slow
def test_metrics_json_and_prompt_only_checkpoint(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["kind"] == "fit" and metrics["dataset"] == "synthetic" and metrics["shots"] == 1
    with open(trained_run / "per_class_test_accuracy.csv") as handle:
        rows = list(csv.DictReader(handle))
    correct, images = sum(int(r["correct"]) for r in rows), sum(int(r["images"]) for r in rows)
    assert metrics["test"]["test/acc"] == pytest.approx(correct / images, abs=1e-6)  # a float32 metric
    assert "test/macro_f1" in metrics["test"]
    assert "val/acc" in metrics["fit"] and metrics["elapsed_s"] > 0
    assert metrics["settings"]["model"]["class_path"] == "dapt_lightning.methods.DAPT"

    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == {
        "model.text_prompt.txt_ctx",
        "model.visual_prompt.vis_ctx",
        "prototypes",
        "prototypes_ready",
    }
    assert checkpoint["classnames"][0] == "red circle" and len(checkpoint["classnames"]) == 24
    assert checkpoint["clip_identity"]["name"] == "dapt-tiny" and checkpoint["clip_identity"]["weights_sha256"]
    assert checkpoint["hyper_parameters"]["beta_v"] == 10.0
    # What resuming needs: optimizer momentum, scheduler, loop progress.
    assert checkpoint["optimizer_states"][0]["state"] and checkpoint["lr_schedulers"] and checkpoint["loops"]
    assert checkpoint["epoch"] == 1

    module = DAPT.load_from_checkpoint(trained_run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert torch.equal(module.model.text_prompt.txt_ctx, checkpoint["state_dict"]["model.text_prompt.txt_ctx"])
    assert module.has_prototypes


@pytest.mark.slow
def test_loading_with_another_clip_is_refused(trained_run: Path) -> None:
    path = trained_run / "checkpoints" / "last.ckpt"
    # Another dapt-tiny (random weights instead of the training run's file): same shapes, other weights.
    with pytest.raises(ClipMismatchError, match="weights sha256.*same --model.clip_name"):
        DAPT.load_from_checkpoint(path, map_location="cpu", pretrained=None)
    # Same CLIP identity, but prompts of another shape: refused with the tensor's name.
    checkpoint = torch.load(path, weights_only=True)
    other = DAPT(classnames=checkpoint["classnames"], clip_name="dapt-tiny", pretrained=None, visual_tokens=4)
    checkpoint["clip_identity"] = other.clip_identity.to_dict()
    with pytest.raises(ClipMismatchError, match="model.visual_prompt.vis_ctx.*shape"):
        other.on_load_checkpoint(checkpoint)


@pytest.mark.slow
def test_dapt_test_on_another_datasets_classes(
    trained_run: Path, tiny_root: Path, tiny_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = write_subset_dataset(tiny_root)
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    args = workflow_args(tiny_root, tmp_path / "cross", tiny_weights, "--data.dataset", "custom")
    args += ["--data.dataset_options", json.dumps(options), "--ckpt_path", str(ckpt)]
    with caplog.at_level(logging.INFO):
        cli = run_cli(["test", *args])
    assert "Cross-dataset checkpoint" in caplog.text and "not loaded (class-specific): prototypes" in caplog.text

    # This run's 5 classes are kept; the generic text context and visual prompts come from the checkpoint.
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    synthetic_names = torch.load(ckpt, weights_only=True)["classnames"]
    assert cli.model.model.classnames == [synthetic_names[label] for label in SUBSET_LABELS]
    assert torch.equal(cli.model.model.text_prompt.txt_ctx.cpu(), saved["model.text_prompt.txt_ctx"])
    assert torch.equal(cli.model.model.visual_prompt.vis_ctx.cpu(), saved["model.visual_prompt.vis_ctx"])
    assert not cli.model.has_prototypes
    assert cli.trainer.global_step == 0  # `dapt test` never trains

    metrics = json.loads((tmp_path / "cross" / "metrics.json").read_text())
    assert metrics["kind"] == "test" and metrics["num_classes"] == 5 and metrics["dataset"] == "custom"
    assert metrics["trained_on"]["dataset"] == "synthetic"
    assert metrics["test"]["test/acc"] == pytest.approx(float(cli.trainer.callback_metrics["test/acc"]))


def test_dapt_test_with_a_missing_checkpoint_says_so(synthetic_root: Path, tmp_path: Path) -> None:
    args = tiny_args(synthetic_root, tmp_path / "run", "--ckpt_path", str(tmp_path / "nope.ckpt"))
    with pytest.raises(FileNotFoundError, match="--ckpt_path: checkpoint .*nope.ckpt does not exist"):
        run_cli(["test", *args])


def test_dapt_test_of_prompts_needs_a_checkpoint(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs --ckpt_path.*--model ZeroShotCLIP"):
        run_cli(["test", *tiny_args(synthetic_root, tmp_path / "run")])


def test_zero_shot_template_defaults_to_the_datasets(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert dataset_template("oxford_pets") == "a photo of a {}, a type of pet."
    assert dataset_template("eurosat") == "a centered satellite photo of {}."
    assert dataset_template("dtd") == "{} texture."
    assert set(list_datasets()) >= {"imagenet", "ucf101", "imagenet_r", "synthetic"}
    synthetic = dataclasses.replace(get_dataset("synthetic"), template="a drawing of a {}.")
    monkeypatch.setitem(registry._DATASETS, "synthetic", synthetic)
    args = tiny_args(synthetic_root, tmp_path / "run", "--model", "ZeroShotCLIP")
    cli = run_cli(["test", *args, "--trainer.limit_test_batches", "1"])
    assert cli.model.model.template == "a drawing of a {}."
    explicit = run_cli(
        [
            "test",
            *args,
            "--model.template",
            "{}.",
            "--trainer.limit_test_batches",
            "1",
            "--run.dir",
            str(tmp_path / "b"),
        ]
    )
    assert explicit.model.model.template == "{}."


def test_analysis_helpers_on_a_tiny_model() -> None:
    from dapt_lightning.experiments import analysis

    classnames = ["red circle", "blue square", "green star"]
    zero_shot = ZeroShotCLIP(classnames=classnames, clip_name="dapt-tiny", pretrained=None, template="a {}.")
    # The analysis path (no prompts) equals the model's own zero-shot text features.
    torch.testing.assert_close(analysis.zero_shot_text_features(zero_shot), zero_shot.model.encode_text())

    tuned = DAPT(classnames=classnames, clip_name="dapt-tiny", pretrained=None)
    words = analysis.nearest_words(tuned, k=3)
    assert len(words) == 16 and all(len(row) == 3 and isinstance(row[0][0], str) for row in words)
    assert all(row[0][1] >= row[1][1] for row in words)  # cosine: nearest first
    embedding = tuned.model.text_tower.token_embedding.weight
    tuned.model.text_prompt.txt_ctx.data[0] = embedding[320]  # token 320 is "a"
    assert analysis.nearest_words(tuned, k=1, metric="l2")[0][0] == (
        "a",
        pytest.approx(0.0, abs=1e-3),
    )  # cdist: matmul-based, ~1e-4
    assert analysis.visual_prompt_norms(tuned).shape == (16,)
    assert analysis.visual_prompt_norms(zero_shot).numel() == 0

    labels = torch.tensor([0, 0, 1, 2])
    images = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2]), 3).float()
    confusion, per_class = analysis.confusion_matrix(images, labels, torch.eye(3))
    assert confusion.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert per_class.tolist() == [0.5, 1.0, 1.0]


def test_dispersion_measures_against_direct_computation() -> None:
    from dapt_lightning.callbacks.evaluation import DispersionStats, mean_pairwise_cosine

    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    expected = sum(float(text[i] @ text[j]) for i, j in pairs) / len(pairs)
    assert mean_pairwise_cosine(text) == pytest.approx(expected, rel=1e-6)

    features, labels = torch.randn(12, 8), torch.tensor([0, 1, 2] * 4)
    prototypes = torch.randn(3, 8)
    stats = DispersionStats(3, 8, torch.device("cpu"))
    stats.update(features[:5], labels[:5], prototypes)  # two batches: streaming sums
    stats.update(features[5:], labels[5:], prototypes)
    summary = stats.summary(with_prototypes=True)
    means = torch.stack([features[labels == c].mean(0) for c in range(3)])
    assert summary["image_sqdist_to_class_mean"] == pytest.approx(
        float((features - means[labels]).square().sum(-1).mean())
    )
    assert summary["image_dist_to_prototype"] == pytest.approx(
        float((features - prototypes[labels]).norm(dim=-1).mean())
    )


@pytest.mark.slow
def test_notebook_runs_as_the_readme_says(
    trained_run: Path, tiny_root: Path, tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat

    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    executed = tmp_path / "out.ipynb"
    # The CLIP weights file the checkpoint was trained on has moved: the notebook's `weights` parameter, relative to
    # the working directory, says where. `papermill notebooks/explore_checkpoint.ipynb out.ipynb -p ckpt_path
    # path/to/last.ckpt -p weights moved/weights.safetensors`, from the repository.
    moved = REPO / "moved-weights-of-a-test" / "weights.safetensors"
    moved.parent.mkdir()
    shutil.move(tiny_weights, moved)
    papermill = Path(sys.executable).parent / "papermill"
    command = [str(papermill), "notebooks/explore_checkpoint.ipynb", str(executed), "-p", "ckpt_path", str(checkpoint)]
    command += ["-p", "weights", str(moved.relative_to(REPO))]
    try:
        result = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "MPLBACKEND": "Agg"}
        )
    finally:
        shutil.move(moved, tiny_weights)
        moved.parent.rmdir()
    assert result.returncode == 0, result.stderr[-3000:]
    notebook = nbformat.read(executed, as_version=4)
    outputs = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "ctx 15:" in outputs and "norms:" in outputs
    # The last section classified 6 test images with `dapt_lightning.load` and showed each with its top-3 classes.
    shown = re.findall(r"^test_\d+\.(?:jpg|png): (.+)$", outputs, re.M)
    assert len(shown) == 6 and all(line.count("%") == 3 for line in shown), outputs[-2000:]
    test_images = len(class_names()) * SIZES["test"]
    match = re.search(rf"accuracy on {test_images} test images: tuned ([0-9.]+)%, zero-shot ([0-9.]+)%", outputs)
    assert match is not None, outputs[-2000:]

    # Its baselines are the CLI's: the tuned accuracy of the run's test, zero-shot CLIP as `dapt test` computes it.
    tuned = json.loads((trained_run / "metrics.json").read_text())["test"]["test/acc"]
    args = workflow_args(tiny_root, tmp_path / "zeroshot", tiny_weights, "--model", "ZeroShotCLIP")
    zero_shot = float(run_cli(["test", *args]).trainer.callback_metrics["test/acc"])
    assert float(match.group(1)) == pytest.approx(100 * tuned, abs=0.006)
    assert float(match.group(2)) == pytest.approx(100 * zero_shot, abs=0.006)


@pytest.mark.slow
def test_vit_b16_checkpoint_with_1000_classes_holds_no_clip(tmp_path: Path, make_trainer) -> None:
    """Prompt-only checkpoints of ViT-B/16 with 1000 classes (random weights, built offline, one training step)."""
    from torch.utils.data import DataLoader, TensorDataset

    names = [n for n in (REPO / "src/dapt_lightning/assets/imagenet_classnames.txt").read_text().splitlines() if n]
    assert len(names) == 1000
    module = DAPT(classnames=names, clip_name="ViT-B-16", pretrained=None)
    module.set_prototypes(torch.nn.functional.normalize(torch.randn(1000, 512), dim=-1))
    data = TensorDataset(torch.randn(2, 3, 224, 224), torch.tensor([0, 1]), torch.tensor([0, 1]))
    trainer = make_trainer(limit_train_batches=1)
    trainer.fit(module, DataLoader(data, batch_size=2))

    path = tmp_path / "dapt.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint["state_dict"]) == {
        "model.text_prompt.txt_ctx",
        "model.visual_prompt.vis_ctx",
        "prototypes",
        "prototypes_ready",
    }
    assert checkpoint["optimizer_states"][0]["state"] and checkpoint["lr_schedulers"] and checkpoint["loops"]
    assert len(checkpoint["classnames"]) == 1000 and checkpoint["clip_identity"]["name"] == "ViT-B-16"
    # DAPT's fp32 prototypes alone are 1000 x 512 x 4 bytes = 2.05 MB; everything else stays under 1 MB.
    prototype_bytes = 1000 * 512 * 4
    assert path.stat().st_size - prototype_bytes < 1_000_000, path.stat().st_size

    # Without prototypes (CoOp, VPT, CoOp+VPT never set them) the whole checkpoint is under 1 MB.
    module.prototypes_ready.fill_(False)
    module.has_prototypes = False
    trainer.save_checkpoint(tmp_path / "prompts.ckpt")
    assert (tmp_path / "prompts.ckpt").stat().st_size < 1_000_000
    assert "prototypes" not in torch.load(tmp_path / "prompts.ckpt", weights_only=True)["state_dict"]
