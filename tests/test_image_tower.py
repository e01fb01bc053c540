"""The class-token-only last block gives the same image features and prompt gradients as the full tower."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dapt_lightning.model.towers import ImageTower


def _perturbed(clip: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in clip.parameters():  # move LayerNorm weights/biases and biases away from their init
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return clip


@pytest.mark.parametrize("with_prompts", [False, True])
def test_cls_only_last_block_equals_the_full_tower(tiny_clip: nn.Module, with_prompts: bool) -> None:
    tower = ImageTower(_perturbed(tiny_clip))
    assert tower.cls_only_last_block
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    prompts = (0.05 * torch.randn(16, tower.width)).requires_grad_() if with_prompts else None

    fast = tower(images, prompts)
    fast_grad = torch.autograd.grad(fast.square().sum(), prompts)[0] if with_prompts else None
    # open_clip's own transformer over every token: the reference (grad checkpointing disables the shortcut).
    tower.visual.transformer.grad_checkpointing = True
    assert not tower.cls_only_last_block
    full = tower(images, prompts)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    if with_prompts:
        full_grad = torch.autograd.grad(full.square().sum(), prompts)[0]
        assert ((fast_grad - full_grad).norm() / full_grad.norm()).item() < 5e-5
    else:
        torch.testing.assert_close(fast, tower.visual(images), rtol=1e-5, atol=1e-6)
