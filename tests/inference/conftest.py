"""A tuned model to use: CoOp fitted on the demo data as `make demo` fits it, and a seconds-long tiny checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import DEMO_CONFIG, TINY_CONFIG, run_cli


@pytest.fixture(scope="session")
def demo_coop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of CoOp fitted and tested as `make demo` does (configs/demo.yaml, seed 1): 98.4% on the demo
    data, which it wrote under ``data/`` next to it."""
    work = tmp_path_factory.mktemp("demo")
    run = work / "runs" / "demo" / "seed1" / "coop"
    command = [sys.executable, "-m", "dapt_lightning.cli", "fit", "--config", str(DEMO_CONFIG), "--model", "CoOp"]
    command += ["--run.dir", str(run), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    command += ["--run.test_after_fit", "true"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CoOp checkpoint of one epoch on a small synthetic data root, with the tiny CLIP's random weights kept in a
    file (as a user trains on a local weights file: loading the checkpoint finds the same CLIP)."""
    from safetensors.torch import save_file

    from dapt_lightning.data.datasets.synthetic import FOLDER, write_synthetic_dataset
    from dapt_lightning.model.clip import load_clip

    root = tmp_path_factory.mktemp("tiny-data")
    write_synthetic_dataset(root / FOLDER, seed=0, image_size=64, sizes={"train": 2, "val": 1, "test": 2})
    weights = tmp_path_factory.mktemp("weights") / "dapt-tiny.safetensors"
    clip, _ = load_clip("dapt-tiny", None)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    run = tmp_path_factory.mktemp("tiny-run") / "coop"
    args = ["--config", str(TINY_CONFIG), "--data.root", str(root), "--run.dir", str(run), "--model", "CoOp"]
    run_cli(["fit", *args, "--model.pretrained", str(weights)])
    return run / "checkpoints" / "last.ckpt"
