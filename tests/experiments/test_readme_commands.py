"""The README's "Running experiments" commands, taken from the README itself and run as a user runs them (from a
folder of their own, data root from $DAPT_DATA_ROOT, no --run.dir) on a fake Oxford Pets with the tiny CLIP."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_datasets import make_fake_dataset
from tiny import REPO, kill_inside_second_epoch, prompts_of, read_metrics

# The only flags the test adds: ViT-B/16 on a real dataset becomes the tiny CLIP on a fake one, and an epoch takes
# 10 small steps (the fake has 20 training images), so that a run can be killed inside one.
TINY = "--model.clip_name dapt-tiny --model.pretrained null --trainer.max_epochs 3 --data.batch_size 2"
TINY += " --data.num_workers 0 --trainer.logger false --trainer.enable_progress_bar false"
RUN = Path("runs/oxford_pets/dapt/16shots/seed1")


def readme_commands() -> tuple[str, list[list[str]]]:
    """The data root export and the ``dapt`` commands of the README's "Running experiments" block."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running experiments", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    export = next(line for line in lines if line.startswith("export DAPT_DATA_ROOT="))
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("dapt ")]
    return export, commands


def as_user(command: list[str], data_root: Path) -> tuple[list[str], dict[str, str]]:
    """The README's command with the repository's config paths, the tiny flags, and the data root exported."""
    args = [str(REPO / arg) if arg.startswith("configs/") else arg for arg in command]
    return [sys.executable, "-m", "dapt_lightning.cli", *args, *TINY.split()], {
        **os.environ,
        "DAPT_DATA_ROOT": str(data_root),
        "PYTHONUNBUFFERED": "1",
    }


def run(command: list[str], cwd: Path, data_root: Path, expect: int = 0) -> subprocess.CompletedProcess[str]:
    argv, env = as_user(command, data_root)
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_the_readme_block_is_what_this_test_runs() -> None:
    export, commands = readme_commands()
    assert export == "export DAPT_DATA_ROOT=/path/to/datasets"
    assert [command[0] for command in commands] == ["fit", "test"]
    fit, test = commands
    assert fit[fit.index("--config") + 1] == "configs/oxfordpets.yaml"
    # The test command evaluates the checkpoint where the fit command leaves it.
    assert test[test.index("--ckpt_path") + 1] == str(RUN / "checkpoints" / "last.ckpt")
    assert re.search(r"--data\.num_shots (\d+)", " ".join(fit)).group(1) == "16"


@pytest.mark.slow
def test_readme_commands_fit_kill_resume_refit_and_test(tmp_path: Path) -> None:
    data_root = tmp_path / "datasets"
    make_fake_dataset("oxford_pets", data_root)
    _, (fit, test) = readme_commands()

    # The uninterrupted reference, in a folder of its own.
    reference = tmp_path / "reference"
    reference.mkdir()
    console = run(fit, reference, data_root)
    # A quiet console: no warning a user cannot act on, and a closing summary.
    for noise in ("Warning", "💡", "pin_memory", "worker processes", "in eval mode at the start", "anonymous"):
        assert noise not in console.stderr, console.stderr[-3000:]
    assert f"Run folder: {RUN}" in console.stdout and "checkpoints/last.ckpt" in console.stdout

    # The same command, killed inside its second epoch ...
    user = tmp_path / "user"
    user.mkdir()
    argv, env = as_user(fit, data_root)
    process = subprocess.Popen(argv, cwd=user, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = user / RUN / "checkpoints" / "last.ckpt"
    kill_inside_second_epoch(process, last, settle=0.2)
    assert not (user / RUN / "metrics.json").exists()

    # ... is refused as it was written (an unfinished run), and resumed with --ckpt_path last.
    refused = run(fit, user, data_root, expect=1)
    assert f"{RUN} holds an unfinished run" in refused.stderr and "--ckpt_path last" in refused.stderr
    run([*fit, "--ckpt_path", "last"], user, data_root)
    resumed, expected = prompts_of(last), prompts_of(reference / RUN / "checkpoints" / "last.ckpt")
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), f"{key} differs after resuming (bitwise)"
    assert read_metrics(user / RUN)["test"] == read_metrics(reference / RUN)["test"]

    # The same fit again stops and says so, leaving the run as it was.
    before = last.read_bytes()
    again = run(fit, user, data_root, expect=1)
    assert f"{RUN} holds a finished run" in again.stderr and "--run.overwrite true" in again.stderr
    assert last.read_bytes() == before

    # The README's test command finds the checkpoint where the fit left it and tests it inside that run.
    result = run(test, user, data_root)
    tested = read_metrics(user / RUN / "test" / "oxford_pets")
    assert tested["test"]["test/acc"] == pytest.approx(read_metrics(user / RUN)["test"]["test/acc"], abs=1e-7)
    assert f"Run folder: {RUN / 'test' / 'oxford_pets'}" in result.stdout
