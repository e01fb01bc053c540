"""`dapt fit` and `dapt test` across the two nodes of the Slurm test cluster (scripts/services.sh), started with
`srun` exactly as the README's "Scale out" section writes it: Lightning reads its ranks from Slurm, the processes
meet over gloo on the first node, and the result equals one process with the same global batch."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from tiny import REPO, prompts_of, read_metrics, read_test_metrics, run_dapt, tiny_args

pytestmark = [pytest.mark.services, pytest.mark.slow]


def readme_two_node_fit() -> tuple[list[str], list[str]]:
    """The README's multi-node fit ("Scale out"): its launcher (``srun ...``) and the flags after its config."""
    section = (REPO / "README.md").read_text().split("## Scale out", 1)[1]
    block = next(block for block in section.split("```bash")[1:] if "\nsrun " in block).split("```", 1)[0]
    words = shlex.split(block.replace("\\\n", " "))
    launcher, command = words[: words.index("dapt")], words[words.index("dapt") :]
    assert command[:4] == ["dapt", "fit", "--config", "configs/oxfordpets.yaml"], command
    return launcher, command[4:]


def srun_dapt(launcher: list[str], job_name: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``LAUNCHER --job-name NAME dapt ARGS``, with this environment's `dapt` first on the PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    command = [*launcher, "--job-name", job_name, "dapt", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def nodes_of(job_name: str) -> str:
    """The nodes Slurm's accounting says the job named ``job_name`` ran on."""
    answer = subprocess.run(
        ["sacct", "--noheader", "--parsable2", "--allocations", "--name", job_name, "--format", "NodeList"],
        capture_output=True,
        text=True,
        check=True,
    )
    return answer.stdout.strip()


def test_a_fit_across_two_nodes_trains_and_tests_as_one_process(
    slurm_nodes: list[str], synthetic_root: Path, tmp_path: Path
) -> None:
    launcher, node_flags = readme_two_node_fit()
    assert launcher == ["srun", "--nodes", "2", "--ntasks-per-node", "1"]
    assert node_flags == ["--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp"]
    # 24 classes x 2 shots: 6 global batches of 8 per epoch, 4 images on each node.
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--trainer.max_epochs", "2", "--run.test_after_fit", "true"]
    run_dapt(["fit", *tiny_args(synthetic_root, one), *common])
    fit_job, test_job = f"fit-{uuid.uuid4().hex[:8]}", f"test-{uuid.uuid4().hex[:8]}"
    srun_dapt(launcher, fit_job, ["fit", *tiny_args(synthetic_root, two), *common, *node_flags])
    assert nodes_of(fit_job) == "dapt-node[1-2]"
    assert read_metrics(two)["settings"]["trainer"]["num_nodes"] == 2

    single, double = prompts_of(one / "checkpoints/last.ckpt"), prompts_of(two / "checkpoints/last.ckpt")
    assert single.keys() == double.keys() and "model.text_prompt.txt_ctx" in single
    for key in single:
        # All-reduced gradients of the two halves of each global batch: the same training up to summation order.
        torch.testing.assert_close(double[key], single[key], rtol=1e-6, atol=1e-6, msg=key)
    fitted_one, fitted_two = read_test_metrics(one), read_test_metrics(two)
    assert fitted_two["test/acc"] == fitted_one["test/acc"]
    assert fitted_two["test/macro_f1"] == fitted_one["test/macro_f1"]

    # One checkpoint tested on both nodes: every test image counted once, every metric the one process's.
    ckpt = ["--ckpt_path", str(one / "checkpoints/last.ckpt")]
    test_one, test_two = tmp_path / "test_one", tmp_path / "test_two"
    run_dapt(["test", *tiny_args(synthetic_root, test_one), *ckpt])
    srun_dapt(launcher, test_job, ["test", *tiny_args(synthetic_root, test_two), *ckpt, *node_flags])
    assert nodes_of(test_job) == "dapt-node[1-2]"
    assert read_test_metrics(test_two) == read_test_metrics(test_one)
