"""The model tests' shared fixture: the perturbed tiny CLIP saved as a weights file, as a user trains on one."""

from __future__ import annotations

from pathlib import Path

import pytest
from prompt_steps import perturbed_tiny_clip
from safetensors.torch import save_file
from torch import nn


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """The perturbed tiny CLIP (``prompt_steps.perturbed_tiny_clip``) and a safetensors file of its weights."""
    clip = perturbed_tiny_clip()
    path = tmp_path_factory.mktemp("weights") / "perturbed-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return clip, path
