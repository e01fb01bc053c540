"""CLIP weight files as OpenAI and open_clip write them, for the loaders' tests (weights and checkpoints)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def write_openai_torchscript(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript archive whose state dict has OpenAI CLIP's key names, like OpenAI's ``ViT-B-16.pt``."""

    class Root(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Root()
    for key, tensor in state_dict.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, nn.Module())
            module = getattr(module, name)
        module.register_parameter(leaf, nn.Parameter(tensor.clone(), requires_grad=False))
    # OpenAI's archives carry these three ints as tensors too; loaders must ignore them.
    for name, value in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
        root.register_buffer(name, torch.tensor(value))
    torch.jit.save(torch.jit.script(root), str(path))


def write_training_checkpoint(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """open_clip's training checkpoint: the state dict wrapped with the epoch and run name, ``module.``-prefixed
    as saved under DDP."""
    state = {f"module.{k}": v for k, v in state_dict.items()}
    torch.save({"epoch": 32, "name": "my-run", "state_dict": state}, path)
