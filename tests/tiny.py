"""The tests' tiny runs: the shared configuration (``conf/tiny.yaml``) and reading what a run left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

from dapt_lightning.checkpoint import load_checkpoint_file
from dapt_lightning.data.datasets.synthetic import FOLDER, SPLIT_FILE
from dapt_lightning.experiments.console import quiet_console
from dapt_lightning.experiments.run import RunRecord, RunSpec, execute
from dapt_lightning.experiments.trainer_cli import DAPTCLI

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = Path(__file__).resolve().parent / "conf" / "tiny.yaml"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
SIZES = {"train": 2, "val": 1, "test": 2}
"""Images per class and split of the smallest synthetic data roots (``write_synthetic_dataset(..., sizes=SIZES)``)."""
SUBSET_LABELS = (0, 5, 10, 15, 20)
"""A second "dataset": 5 of the 24 synthetic classes, relabelled 0..4 (``write_subset_dataset``)."""


def tiny_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    """``dapt fit/test`` arguments of a seconds-long run on the data root ``root``, kept in ``run_dir``.

    The config comes first: jsonargparse applies arguments in order, so ``extra`` flags override it.
    """
    return ["--config", str(TINY_CONFIG), "--data.root", str(root), "--run.dir", str(run_dir), *extra]


def run_cli(argv: list[str]) -> RunRecord:
    """``dapt COMMAND ARGS...`` in this process, as the console command runs it (``run.execute``)."""
    return execute(RunSpec(argv[0], args=tuple(argv[1:])))


def exit_status(argv: list[str]) -> int:
    """The ``dapt`` console command in this process (``dapt_lightning.cli.main``); its exit status."""
    from dapt_lightning.cli import main

    try:
        main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def build(argv: list[str]) -> DAPTCLI:
    """Parse ``argv`` (no subcommand) and instantiate the method, DataModule and Trainer; nothing runs."""
    with quiet_console():
        return DAPTCLI(argv, run=False)


def run_dapt(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a fresh process (DDP re-launches it per rank)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dapt_lightning.cli", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def prompts_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The learned tensors (prompts and prototypes) of a checkpoint."""
    state = load_checkpoint_file(checkpoint)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(("model.text_prompt", "model.visual_prompt", "prototypes"))}


def read_metrics(run_dir: Path) -> dict:
    """A run folder's ``metrics.json``."""
    return json.loads((run_dir / "metrics.json").read_text())


def read_test_metrics(run_dir: Path) -> dict[str, float]:
    """The test metrics of a run folder's ``metrics.json``."""
    return read_metrics(run_dir)["test"]


def quiet_trainer(**overrides: object) -> L.Trainer:
    """A quiet one-epoch CPU Trainer (no logger, checkpoints or progress bar); keyword arguments override.

    The DataModule shards data itself, so Lightning's distributed sampler is off, as the `dapt` CLI sets it.
    """
    settings: dict[str, object] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "use_distributed_sampler": False,
    }
    return L.Trainer(**{**settings, **overrides})


def write_subset_dataset(root: Path) -> dict[str, str]:
    """A `custom` dataset over a 5-class subset of the synthetic images; returns its --data.dataset_options."""
    split = json.loads((root / FOLDER / SPLIT_FILE).read_text())
    relabel = {old: new for new, old in enumerate(SUBSET_LABELS)}
    subset = {name: [[p, relabel[y], c] for p, y, c in items if y in relabel] for name, items in split.items()}
    (root / FOLDER / "split_zhou_subset.json").write_text(json.dumps(subset))
    return {"path": FOLDER, "split_file": "split_zhou_subset.json"}


def kill_inside_second_epoch(process: subprocess.Popen, last: Path, settle: float = 0.3) -> None:
    """SIGKILL a running ``dapt fit`` once its first epoch is checkpointed at ``last``, ``settle`` seconds into the
    second: what a crash or a pre-empted cluster job does. (``last`` first appears, written whole, when the first
    epoch ends.)"""
    deadline = time.time() + 180
    while time.time() < deadline:
        if last.exists():
            break
        assert process.poll() is None, process.stderr.read()[-3000:] if process.stderr else ""
        time.sleep(0.05)
    time.sleep(settle)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
