"""Reliability: exact multi-process runs, exact resume after SIGKILL, numerical faults, bad input, safe artefacts.
The multi-process and kill tests launch the real `dapt` command in subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import (
    REPO,
    TINY_CONFIG,
    kill_inside_second_epoch,
    prompts_of,
    read_metrics,
    read_test_metrics,
    run_dapt,
    tiny_args,
)

from dapt_lightning.checkpoint import SafeCheckpointIO, UnsafeCheckpointError, load_checkpoint_file
from dapt_lightning.cli import main
from dapt_lightning.data.datamodule import FewShotDataModule, validate_num_shots
from dapt_lightning.data.image_dataset import ImageListDataset, ImageLoadError
from dapt_lightning.data.registry import get_dataset_reader
from dapt_lightning.data.transforms import build_transform
from dapt_lightning.data.types import Datum
from dapt_lightning.methods import method_class

SRC = REPO / "src" / "dapt_lightning"


# 1 + 2. Exact distributed evaluation and training ---------------------------------------------------------------


@pytest.mark.slow
def test_two_process_training_and_evaluation_equal_one_process(synthetic_root: Path, tmp_path: Path) -> None:
    # 24 classes x 2 shots = 48 images: 6 global batches of 8 (4 per rank). The 96 test images with a test batch
    # of 50 are not divisible by 2 x 50, so padding or dropping would change the counts.
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--trainer.max_epochs", "2", "--run.test_after_fit", "true"]
    run_dapt(["fit", *tiny_args(synthetic_root, one), *common])
    ddp = run_dapt(
        ["fit", *tiny_args(synthetic_root, two), *common, "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    )
    assert "It is recommended to use `self.log(" not in ddp.stderr  # no warning a user cannot act on, per run

    single, double = prompts_of(one / "checkpoints/last.ckpt"), prompts_of(two / "checkpoints/last.ckpt")
    assert single.keys() == double.keys() and "prototypes" in single
    for key in single:
        # Same global batches, DDP-averaged gradients: the same training up to float summation order.
        torch.testing.assert_close(double[key], single[key], rtol=1e-4, atol=1e-6, msg=key)
    assert read_test_metrics(two)["test/acc"] == pytest.approx(read_test_metrics(one)["test/acc"], abs=1e-6)

    # Evaluating one checkpoint with 1 and 2 processes counts every test image exactly once in both.
    ckpt = str(one / "checkpoints/last.ckpt")
    test_one, test_two = tmp_path / "test_one", tmp_path / "test_two"
    run_dapt(["test", *tiny_args(synthetic_root, test_one), "--ckpt_path", ckpt])
    run_dapt(
        ["test", *tiny_args(synthetic_root, test_two), "--ckpt_path", ckpt, "--trainer.devices", "2"]
        + ["--trainer.strategy", "ddp"]
    )
    m1, m2 = read_test_metrics(test_one), read_test_metrics(test_two)
    assert m2["test/acc"] == pytest.approx(m1["test/acc"], abs=1e-7)
    assert m2["test/macro_f1"] == pytest.approx(m1["test/macro_f1"], abs=1e-7)
    # And both equal the test that ended the fit, on the model in memory.
    assert m1["test/acc"] == pytest.approx(read_test_metrics(one)["test/acc"], abs=1e-7)

    # The same under bf16-mixed: two processes count every image once and predict what one process predicts.
    bf16 = ["--trainer.precision", "bf16-mixed"]
    bf16_one, bf16_two = tmp_path / "bf16_one", tmp_path / "bf16_two"
    run_dapt(["test", *tiny_args(synthetic_root, bf16_one), "--ckpt_path", ckpt, *bf16])
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    run_dapt(["test", *tiny_args(synthetic_root, bf16_two), "--ckpt_path", ckpt, *bf16, *ddp])
    b1, b2 = read_test_metrics(bf16_one), read_test_metrics(bf16_two)
    assert read_metrics(bf16_two)["settings"]["trainer"]["precision"] == "bf16-mixed"
    assert b2["test/acc"] == b1["test/acc"] and b2["test/macro_f1"] == b1["test/macro_f1"]


# 3. Resume after SIGKILL ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_result(synthetic_root: Path, tmp_path: Path) -> None:
    epochs = ["--trainer.max_epochs", "4", "--run.test_after_fit", "true"]
    reference = tmp_path / "reference"
    # Two loader workers here, none in the interrupted run: augmentations must not depend on worker processes.
    run_dapt(["fit", *tiny_args(synthetic_root, reference), *epochs, "--data.num_workers", "2"])

    killed = tmp_path / "killed"
    args = ["fit", *tiny_args(synthetic_root, killed), *epochs]
    command = [sys.executable, "-m", "dapt_lightning.cli", *args]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = killed / "checkpoints/last.ckpt"
    kill_inside_second_epoch(process, last)
    assert not (killed / "metrics.json").exists()
    interrupted_epoch = load_checkpoint_file(last)["epoch"]
    assert interrupted_epoch < 4

    run_dapt([*args, "--ckpt_path", "last"])
    resumed, expected = prompts_of(last), prompts_of(reference / "checkpoints/last.ckpt")
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), f"{key} differs after resuming (bitwise)"
    assert read_test_metrics(killed) == read_test_metrics(reference)


def test_checkpoint_write_is_atomic_when_the_disk_fills(tmp_path: Path) -> None:
    # A real kernel error: the process may not grow files beyond 64 kB (RLIMIT_FSIZE), as on a full disk.
    target = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, target)
    before = target.read_bytes()
    script = f"""
import resource, signal, torch
from dapt_lightning.checkpoint import SafeCheckpointIO
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
try:
    SafeCheckpointIO().save_checkpoint({{"state_dict": {{"w": torch.ones(1_000_000)}}}}, {str(target)!r})
except OSError as error:
    print("ERROR:", error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "ERROR:" in result.stdout, result.stdout + result.stderr
    assert str(target) in result.stdout and "is full" in result.stdout and "intact" in result.stdout
    assert target.read_bytes() == before  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


# 4. Numerical faults --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step_and_term_and_keeps_the_last_checkpoint(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    main(["fit", *tiny_args(synthetic_root, out), "--trainer.max_epochs", "1"])
    last = out / "checkpoints/last.ckpt"
    good = last.read_bytes()
    # A negative RBF bandwidth makes exp(-t * d^2) overflow: the inter-dispersion term becomes inf.
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                *tiny_args(synthetic_root, out),
                "--trainer.max_epochs",
                "2",
                "--model.rbf_t=-1e6",
                "--ckpt_path",
                "last",
                "--run.overwrite",  # the first fit finished: continuing it is a deliberate overwrite
                "true",
            ]
        )
    message = capsys.readouterr().err
    assert "'inter'" in message and "global step" in message and "--model.lr" in message and "16-mixed" in message
    assert last.read_bytes() == good


# 5. Bad input gets a clear error --------------------------------------------------------------------------------


def test_missing_data_root_names_the_path_and_the_check_command(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    data = FewShotDataModule(dataset="oxford_pets", root=str(missing))  # reads nothing yet (Lightning's contract)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as error:
        data.setup("fit")
    assert "dapt data check" in str(error.value)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        data.classnames  # noqa: B018 - asking for the classes reads the split too


def test_malformed_split_json_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "oxford_pets"
    (folder / "images").mkdir(parents=True)
    (folder / "annotations").mkdir()
    (folder / "split_zhou_OxfordPets.json").write_text('{"train": [["a.jpg", 0, "cat"]], ')
    with pytest.raises(ValueError, match="split_zhou_OxfordPets.json"):
        get_dataset_reader("oxford_pets")(tmp_path)


@pytest.mark.parametrize("content", [None, b"this is not a JPEG"], ids=["missing", "corrupt"])
def test_unreadable_image_names_the_file_and_the_dataset(tmp_path: Path, content: bytes | None) -> None:
    image = tmp_path / "broken.jpg"
    if content is not None:
        image.write_bytes(content)
    dataset = ImageListDataset([Datum(str(image), 0, "cat")], build_transform("test", 32), "oxford_pets")
    with pytest.raises(ImageLoadError, match=re.escape(str(image))) as error:
        dataset[0]
    assert "oxford_pets" in str(error.value)


def test_class_without_training_images_is_named(tmp_path: Path, synthetic_root: Path) -> None:
    split = json.loads((synthetic_root / "synthetic/split_zhou_Synthetic.json").read_text())
    split["train"] = [entry for entry in split["train"] if entry[2] != "red cross"]
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "split.json").write_text(json.dumps(split))
    options = {"path": str(folder), "split_file": "split.json", "image_dir": str(synthetic_root / "synthetic")}
    data = FewShotDataModule(dataset="custom", root=str(tmp_path), dataset_options=options, num_shots=1)
    with pytest.raises(ValueError, match="red cross"):
        data.setup("fit")


@pytest.mark.parametrize("shots", [0, -2, 1.5, "4", True])
def test_bad_num_shots_is_refused_with_the_setting_name(shots: object) -> None:
    with pytest.raises(ValueError, match="--data.num_shots"):
        validate_num_shots(shots)
    assert validate_num_shots(-1) == -1 and validate_num_shots(16) == 16


def test_unknown_dataset_and_method_list_the_choices() -> None:
    with pytest.raises(ValueError, match="oxford_pets"):
        get_dataset_reader("oxfordpets")
    with pytest.raises(ValueError, match="coop_vpt"):
        method_class("coopvpt")


def test_config_key_typo_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(TINY_CONFIG), "--model.lrr", "0.1"])
    assert "--model.lrr" in capsys.readouterr().err


def test_unwritable_output_folder_is_named(tmp_path: Path, synthetic_root: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        main(["fit", *tiny_args(synthetic_root, tmp_path / "run"), "--run.dir", str(blocker / "run")])
    err = capsys.readouterr().err
    assert "--run.dir: cannot write to" in err and str(blocker / "run") in err


def test_missing_checkpoint_is_refused(tmp_path: Path, synthetic_root: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["test", *tiny_args(synthetic_root, tmp_path / "run"), "--ckpt_path", str(tmp_path / "nope.ckpt")])
    assert "nope.ckpt" in capsys.readouterr().err


# 6. Safe artefacts ------------------------------------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_runs_code_on_unpickling_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(evil))):
        load_checkpoint_file(evil)
    with pytest.raises(UnsafeCheckpointError):
        SafeCheckpointIO().load_checkpoint(evil)
    assert not marker.exists()
    # The exploit is real: an unrestricted load runs it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_no_unsafe_deserialisation_on_any_load_path() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bpickle\.loads?\(", line) or re.search(r"\bjoblib\.load\(", line):
                offenders.append(f"{path}:{number}: {line.strip()}")
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.slow
def test_resuming_fit_with_other_classes_is_refused(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    main(["fit", *tiny_args(synthetic_root, out), "--trainer.max_epochs", "1"])
    split = json.loads((synthetic_root / "synthetic/split_zhou_Synthetic.json").read_text())
    subset = {name: [e for e in entries if e[1] < 5] for name, entries in split.items()}  # 5 of the 24 classes
    folder = tmp_path / "five"
    folder.mkdir()
    (folder / "split.json").write_text(json.dumps(subset))
    images = str(synthetic_root / "synthetic")
    options = json.dumps({"path": str(folder), "split_file": "split.json", "image_dir": images})
    args = [*tiny_args(synthetic_root, tmp_path / "other"), "--data.dataset", "custom"]
    args += ["--data.dataset_options", options]
    with pytest.raises(SystemExit):
        main(["fit", *args, "--ckpt_path", str(out / "checkpoints/last.ckpt")])
    message = capsys.readouterr().err
    assert "--ckpt_path" in message and "24" in message and "dapt test" in message


def test_synthetic_dataset_rejects_options_and_names_a_malformed_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--data.dataset_options"):
        get_dataset_reader("synthetic")(tmp_path, path="x")
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic/split_zhou_Synthetic.json").write_text('{"train": [')
    with pytest.raises(ValueError, match="split_zhou_Synthetic.json"):
        get_dataset_reader("synthetic")(tmp_path)
