"""The README's "Use it from Python" and "Add a method", run as written: a plain Trainer trains DAPT to the test
accuracy `dapt fit` reaches with the same seed, and a method class from outside the package runs through the CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import DEMO_CONFIG, REPO, read_metrics, run_cli, tiny_args

from dapt_lightning import DAPT, CLIPMethod, FewShotDataModule, list_methods, method_class
from dapt_lightning.checkpoint import load_checkpoint_file
from dapt_lightning.methods.registry import method_reference, setting_name

README = REPO / "README.md"


def readme_blocks(heading: str) -> list[tuple[str, str]]:
    """The fenced code blocks (language, text) of the README section ``### heading``, in order."""
    text = README.read_text()
    section = text.split(f"### {heading}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


@pytest.mark.slow
def test_a_plain_trainer_trains_dapt_to_dapt_fits_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (train, load) = [code for language, code in readme_blocks("Use it from Python") if language == "python"]
    namespace: dict = {}
    exec(compile(train, "README: Use it from Python", "exec"), namespace)  # noqa: S102 - the README's own code
    plain = namespace["results"][0]["test/acc"]
    assert isinstance(namespace["model"], DAPT) and namespace["model"].has_prototypes  # DAPT added its callback
    assert namespace["data"].image_size == 64  # the DataModule took the tiny CLIP's size from the model

    # The same run through the CLI, as `dapt fit --config configs/demo.yaml` (seed 1) plus a test after fitting.
    fit = run_cli(["fit", "--config", str(DEMO_CONFIG), "--run.dir", "cli", "--run.test_after_fit", "true"])
    assert fit.record["test"]["test/acc"] == plain
    assert abs(plain - 0.969) < 0.01  # the README's number (the demo's DAPT, seed 1, bf16-mixed)

    exec(compile(load, "README: loading a checkpoint", "exec"), namespace)  # noqa: S102
    assert type(namespace["tuned"]) is DAPT and namespace["again"][0]["test/acc"] == plain
    for name in ("text_prompt.txt_ctx", "visual_prompt.vis_ctx"):
        trained = namespace["model"].model.get_parameter(name)
        assert torch.equal(namespace["tuned"].model.get_parameter(name), trained)


@pytest.mark.slow
def test_a_method_of_ones_own_runs_as_the_readme_shows(tmp_path: Path) -> None:
    blocks = readme_blocks("Add a method")
    for language, code in blocks:
        if language in ("python", "yaml"):
            name = code.splitlines()[0].removeprefix("# ").strip()
            (tmp_path / name).write_text(code)
    (command,) = [code.strip() for language, code in blocks if language == "bash"]
    (tmp_path / "configs").mkdir()
    shutil.copy(DEMO_CONFIG, tmp_path / "configs" / "demo.yaml")
    env = {**os.environ, "WANDB_MODE": "offline", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "runs" / "synthetic" / "smooth_coop" / "16shots" / "seed1"
    assert read_metrics(folder)["method"] == "smooth_coop" and (folder / "checkpoints" / "last.ckpt").is_file()

    sys.path.insert(0, str(tmp_path))
    try:
        loaded = CLIPMethod.load_from_checkpoint(folder / "checkpoints" / "last.ckpt")
        assert type(loaded).__name__ == "SmoothCoOp" and loaded.hparams.smoothing == 0.2
        assert method_class("smooth_coop") is type(loaded)  # it registered itself
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_methods())
def test_every_method_is_selected_by_its_class_name(name: str, synthetic_root: Path, tmp_path: Path) -> None:
    method = method_class(name)
    command = "test" if name == "zeroshot" else "fit"
    record = run_cli([command, *tiny_args(synthetic_root, tmp_path / "run", "--model", setting_name(method))])
    assert type(record.model) is method and record.record["method"] == name
    if command == "fit":  # the checkpoint names the class that load_from_checkpoint rebuilds
        checkpoint = load_checkpoint_file(record.checkpoint)
        assert method_reference(checkpoint, record.checkpoint)[0] is method


def test_the_library_exports_what_a_lightning_user_imports() -> None:
    import dapt_lightning

    for name in ("DAPT", "CoOp", "VPT", "CoOpVPT", "ZeroShotCLIP", "FewShotDataModule", "PrototypeCallback"):
        assert hasattr(dapt_lightning, name), name
    assert dapt_lightning.FewShotDataModule is FewShotDataModule


def test_a_method_built_without_class_names_takes_the_datamodules(synthetic_root: Path, make_trainer) -> None:
    data = FewShotDataModule("synthetic", root=str(synthetic_root), num_shots=1, batch_size=8, num_workers=0)
    model = DAPT(clip_name="dapt-tiny", pretrained=None, lr=0.1)
    assert model.model is None  # nothing loaded until the run starts
    make_trainer(limit_train_batches=1, limit_val_batches=0).fit(model, datamodule=data)
    assert model.classnames == data.classnames and model.hparams.classnames == data.classnames
    assert model.has_prototypes  # DAPT's own PrototypeCallback ran
