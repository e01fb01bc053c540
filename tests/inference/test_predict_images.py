"""`dapt predict` on a user's own images and `--model.classnames`, run as a user types them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image
from tiny import exit_status

from dapt_lightning.cli import SOME_SKIPPED
from dapt_lightning.inference import load

dapt = exit_status


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A user's folder: three real images (one in a subfolder), a text file named .jpg and a truncated PNG."""
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    for name, colour in (("red.jpg", "red"), ("blue.png", "blue"), ("trip/green.jpg", "green")):
        Image.new("RGB", (80, 60), colour).save(folder / name)
    (folder / "notes.jpg").write_text("a shopping list")
    (folder / "trip" / "cut.png").write_bytes((folder / "blue.png").read_bytes()[:60])
    return folder


def test_predict_classifies_files_folders_and_globs_and_lists_what_it_skipped(
    tiny_checkpoint: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    images = f"[{photos / 'trip'}, {photos / '*.jpg'}, {photos / 'blue.png'}, {photos / 'gone.jpg'}]"
    status = dapt(["predict", "--ckpt_path", str(tiny_checkpoint), "--data.images", images, "--run.dir", str(out)])
    assert status == SOME_SKIPPED  # the exit status says some files were skipped

    predicted = rows(out / "predictions.csv")
    assert sorted(Path(row["image"]).name for row in predicted) == ["blue.png", "green.jpg", "red.jpg"]
    skipped = {Path(row["image"]).name: row["reason"] for row in rows(out / "skipped.csv")}
    assert skipped["gone.jpg"] == "no such file"
    assert skipped["notes.jpg"].startswith("not a decodable image") and "cut.png" in skipped
    log = capsys.readouterr().out + (out / "run.log").read_text()
    assert f"Skipped 3 of 6 files (not classified), listed with their reasons in {out / 'skipped.csv'}" in log

    # The rows are the Python call's answers for the same files: top-5 classes of the checkpoint's 24.
    classifier = load(tiny_checkpoint, device="cpu")
    expected = classifier.predict([row["image"] for row in predicted])
    for row, top in zip(predicted, expected.top(5), strict=True):
        assert row["label"] == "" and row["label_name"] == ""  # own images carry no true label
        assert [row[f"top{k}"] for k in range(1, 6)] == [name for name, _ in top]
        assert float(row["top1_probability"]) == pytest.approx(top[0][1], abs=1e-6)


def test_predict_chooses_among_the_class_names_given(tiny_checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    classes = "red circle,blue square,green cross"
    argv = ["predict", "--ckpt_path", str(tiny_checkpoint), "--data.images", str(photos / "*.png")]
    assert dapt([*argv, "--model.classnames", classes, "--run.dir", str(out)]) == 0  # nothing skipped: exit 0
    (row,) = rows(out / "predictions.csv")
    assert {row["top1"], row["top2"], row["top3"]} == set(classes.split(",")) and "top4" not in row
    expected = load(tiny_checkpoint, device="cpu").predict(row["image"], classnames=classes)
    assert row["top1"] == expected.labels[0]


def test_own_images_are_only_for_predict(tiny_checkpoint: Path, photos: Path, capsys) -> None:
    status = dapt(["test", "--ckpt_path", str(tiny_checkpoint), "--data.images", str(photos)])
    assert status == 2
    assert "--data.images: your own images are only classified (dapt predict)" in capsys.readouterr().err


def test_a_glob_that_finds_nothing_is_one_line_before_any_folder(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    pattern = str(tmp_path / "nowhere" / "*.jpg")
    status = dapt(["predict", "--ckpt_path", str(tiny_checkpoint), "--data.images", pattern, "--run.dir", str(out)])
    assert status == 2 and not out.exists()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"dapt: error: --data.images: no image file found in {pattern} (a folder is searched")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--ckpt_path", "nowhere/last.ckpt"], "--ckpt_path: checkpoint nowhere/last.ckpt does not exist"),
        (["export", "--ckpt_path", "x.ckpt", "--format", "tflite"], 'Parser key "format"'),
        (["serve", "--ckpt_path", "nowhere/last.ckpt"], "--ckpt_path: checkpoint nowhere/last.ckpt does not exist"),
        (["serve", "--ckpt_path", "x.ckpt", "--port", "70000"], "--port must be between 1 and 65535, got 70000"),
        (["serve", "--ckpt_path", "x.ckpt", "--top_k", "0"], "--top_k must be >= 1, got 0"),
    ],
)
def test_export_and_serve_refuse_bad_settings_in_one_line(args: list[str], message: str, capsys) -> None:
    assert dapt(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("dapt: error: ") and message in line
