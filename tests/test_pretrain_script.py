"""`scripts/pretrain_tiny_clip.py`, which makes the demo's weights: the same seed gives the same weights, and they load
as the tiny CLIP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from tiny import REPO

from dapt_lightning.model.clip import TINY_CLIP_NAME, load_clip

SCRIPT = REPO / "scripts" / "pretrain_tiny_clip.py"


def pretrain(out: Path) -> dict[str, torch.Tensor]:
    args = ["--steps", "3", "--per-look", "2", "--batch-size", "16", "--threads", "1", "--eval-every", "0"]
    subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], check=True, capture_output=True)
    return load_file(str(out))


@pytest.mark.slow
def test_pretraining_is_deterministic_and_its_weights_load_as_the_tiny_clip(tmp_path: Path) -> None:
    first, again = pretrain(tmp_path / "a.safetensors"), pretrain(tmp_path / "b.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    torch.manual_seed(0)  # the script's seed: its initial weights
    untrained = open_clip.create_model(TINY_CLIP_NAME).state_dict()
    assert not torch.equal(first["visual.conv1.weight"], untrained["visual.conv1.weight"].half())  # it trained
    model, identity = load_clip(TINY_CLIP_NAME, str(tmp_path / "a.safetensors"))
    assert torch.equal(model.visual.conv1.weight.half(), first["visual.conv1.weight"])
