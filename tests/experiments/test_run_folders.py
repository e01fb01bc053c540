"""`dapt fit/test/predict` as the README writes them, without --run.dir: one folder per run, a finished run is not
run again, an unfinished one resumes, evaluations go inside the trained run, and the console ends with a summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tiny import TINY_CONFIG, build, read_metrics, run_cli

from dapt_lightning.callbacks.predictions import read_predictions
from dapt_lightning.cli import main

RUN = Path("runs/synthetic/dapt/2shots/seed1")  # runs/<dataset>/<method>/<shots>shots/seed<seed>/


def readme_args(root: Path, *extra: str) -> list[str]:
    """The README's command line, on the tiny configuration: no --run.dir."""
    return ["--config", str(TINY_CONFIG), "--data.root", str(root), *extra]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_fit_without_run_dir_keeps_the_run_in_its_own_folder(
    synthetic_root: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["fit", *readme_args(synthetic_root)])
    run = in_tmp / RUN
    assert sorted(path.name for path in run.iterdir()) == ["checkpoints", "config.yaml", "metrics.json", "run.log"]
    assert [path.name for path in (run / "checkpoints").iterdir()] == ["last.ckpt"]  # one checkpoint file
    assert read_metrics(run)["kind"] == "fit"
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["dir"] == str(RUN)
    out = capsys.readouterr().out
    assert f"Run folder: {RUN}" in out and f"checkpoint {RUN / 'checkpoints' / 'last.ckpt'}" in out
    assert f"Run folder: {RUN}" in (run / "run.log").read_text()

    # The same command again: refused in one line, nothing touched.
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *readme_args(synthetic_root)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"{RUN} holds a finished run" in err and "--run.overwrite true" in err
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before

    # Evaluations of the checkpoint go inside the trained run, each in its own folder.
    checkpoint = str(RUN / "checkpoints" / "last.ckpt")
    test = run_cli(["test", *readme_args(synthetic_root, "--ckpt_path", checkpoint)])
    tested = in_tmp / RUN / "test" / "synthetic"
    assert read_metrics(tested)["test"]["test/acc"] == pytest.approx(float(test.trainer.callback_metrics["test/acc"]))
    assert (tested / "per_class_test_accuracy.csv").is_file()

    predict = run_cli(["predict", *readme_args(synthetic_root, "--ckpt_path", checkpoint)])
    rows = read_predictions(in_tmp / RUN / "predict" / "synthetic" / "predictions.csv")
    items = predict.datamodule.dataset("test").items
    assert len(rows) == len(items) and {row["image"] for row in rows} == {item.impath for item in items}
    assert f"Predictions for {len(items)} images" in (in_tmp / RUN / "predict" / "synthetic" / "run.log").read_text()
    # The recorded top classes are the model's: recompute the first image's probabilities.
    first = next(row for row in rows if row["image"] == items[0].impath)
    image, label, _ = predict.datamodule.dataset("test")[0]
    with torch.no_grad():
        probabilities = predict.model.model.eval()(image[None])[0].softmax(-1)[0]
    top = probabilities.topk(5)
    names = predict.model.model.classnames
    assert [first[f"top{k + 1}"] for k in range(5)] == [names[i] for i in top.indices.tolist()]
    assert [float(first[f"top{k + 1}_probability"]) for k in range(5)] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert int(first["label"]) == label and first["label_name"] == names[label]


@pytest.mark.slow
def test_an_unfinished_run_is_refused_without_ckpt_path_and_resumes_with_it(
    synthetic_root: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two_epochs = ["--trainer.max_epochs", "2"]
    main(["fit", *readme_args(synthetic_root)])  # one epoch
    run = in_tmp / RUN
    (run / "metrics.json").unlink()  # as if killed after the first epoch's checkpoint
    checkpoint = (run / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(SystemExit):
        main(["fit", *readme_args(synthetic_root, *two_epochs)])
    err = capsys.readouterr().err
    assert f"{RUN} holds an unfinished run" in err and "--ckpt_path last" in err
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == checkpoint

    resumed = run_cli(["fit", *readme_args(synthetic_root, *two_epochs, "--ckpt_path", "last")])
    assert resumed.trainer.current_epoch == 2 and read_metrics(run)["epochs"] == 2
    steps_per_epoch = 48 // 8  # 24 classes x 2 shots, batches of 8
    assert resumed.trainer.global_step == 2 * steps_per_epoch  # the first epoch was not trained again

    # --run.overwrite starts again in the same folder.
    again = run_cli(["fit", *readme_args(synthetic_root, "--run.overwrite", "true")])
    assert again.trainer.current_epoch == 1 and read_metrics(run)["epochs"] == 1


def test_devices_that_do_not_divide_the_global_batch_are_refused_before_launch(
    synthetic_root: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["fit", *readme_args(synthetic_root, "--trainer.devices", "3", "--trainer.strategy", "ddp")])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dapt: error")]
    assert "--data.batch_size 8 is the global batch, split over 3 processes" in line and "multiple of 3" in line
    assert not (in_tmp / "runs").exists()  # refused before any work


def test_16_mixed_on_a_cpu_runs_and_is_recorded_as_bf16(synthetic_root: Path, in_tmp: Path) -> None:
    cli = build([*readme_args(synthetic_root, "--trainer.precision", "16-mixed")])
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.config.trainer.precision == "bf16-mixed"  # what config.yaml and metrics.json record


@pytest.mark.slow
def test_a_checkpoint_and_its_weights_moved_elsewhere_are_tested_from_there(
    synthetic_root: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    from dapt_lightning.model.clip import load_clip

    clip, _ = load_clip("dapt-tiny", None)
    weights = in_tmp / "machine_a" / "dapt-tiny.safetensors"
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    fit = run_cli(
        ["fit", *readme_args(synthetic_root, "--model.pretrained", str(weights), "--run.test_after_fit", "true")]
    )
    trained_acc = read_metrics(in_tmp / RUN)["test"]["test/acc"]

    # Another machine: the run folder and the weights file in other places.
    moved = in_tmp / "machine_b"
    (moved / "runs").mkdir(parents=True)
    (in_tmp / "runs").rename(moved / "runs" / "old")
    weights.rename(moved / "dapt-tiny.safetensors")
    checkpoint = moved / "runs" / "old" / RUN.relative_to("runs") / "checkpoints" / "last.ckpt"
    args = readme_args(
        synthetic_root, "--ckpt_path", str(checkpoint), "--model.pretrained", str(moved / "dapt-tiny.safetensors")
    )
    # Settings that only change how the run executes are honoured.
    test = run_cli(["test", *args, "--model.text_encoding", "full"])
    assert test.model.model.text_encoder.name == "full"
    assert float(test.trainer.callback_metrics["test/acc"]) == pytest.approx(trained_acc, abs=1e-6)
    assert torch.equal(test.model.model.text_prompt.txt_ctx, fit.model.model.text_prompt.txt_ctx)

    # Settings that would change the model are refused in one line.
    with pytest.raises(SystemExit):
        main(["test", *args, "--model.visual_tokens", "4", "--run.overwrite", "true"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dapt: error")]
    assert "--model.visual_tokens 4 differs from the checkpoint's 16" in line and str(checkpoint) in line
