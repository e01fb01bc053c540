"""The lean blocks and the class-token-only last block give open_clip's image features and prompt gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import OperatorCounter
from dapt_lightning.model.blocks import CastCache, attention, block_forward, class_token_block_forward
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


def test_lean_blocks_equal_open_clip_blocks_with_fewer_operators(tiny_clip: nn.Module) -> None:
    block = _perturbed(tiny_clip).visual.transformer.resblocks[0]
    x = torch.randn(3, 17, block.attn.embed_dim, generator=torch.Generator().manual_seed(3), requires_grad=True)
    counts = {}
    outputs = {}
    casts = CastCache()
    flat = lambda x: block_forward(block, x.reshape(-1, x.shape[-1]), x.shape[0], casts).reshape(x.shape)  # noqa: E731
    for name, run in (("open_clip", block), ("lean", flat)):
        with OperatorCounter() as counter:
            out = run(x)
            grad = torch.autograd.grad(out.square().sum(), x)[0]
        counts[name], outputs[name] = counter.count, (out, grad)
    (lean, lean_grad), (reference, reference_grad) = outputs["lean"], outputs["open_clip"]
    torch.testing.assert_close(lean, reference, rtol=1e-5, atol=1e-6)
    assert ((lean_grad - reference_grad).norm() / reference_grad.norm()).item() < 1e-5
    assert counts["lean"] < 0.6 * counts["open_clip"], counts  # the host work a batch-32 GPU step is bound by
    class_token = class_token_block_forward(block, x.reshape(-1, x.shape[-1]), x.shape[0], casts)
    torch.testing.assert_close(class_token, block(x)[:, 0], rtol=1e-5, atol=1e-6)


def test_frozen_weights_are_cast_once_under_autocast_with_the_same_results(tiny_clip: nn.Module) -> None:
    """Autocast re-casts weights that need no grad at every call; the lean blocks cast them once, to the same values."""
    block = _perturbed(tiny_clip).visual.transformer.resblocks[0]
    x = torch.randn(3 * 17, block.attn.embed_dim, generator=torch.Generator().manual_seed(4))
    # Reference: the same block with weights that require grad, which autocast itself casts (and never caches).
    reference_block = copy.deepcopy(block).requires_grad_(True)
    casts, reference_casts = CastCache(), CastCache()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        block_forward(block, x, 3, casts)  # the first call makes the copies
        assert len(casts) == 8  # in_proj, out_proj, c_fc and c_proj: weights and biases
        with OperatorCounter() as counter:
            cast_once = block_forward(block, x, 3, casts)
        with OperatorCounter() as reference_counter:
            reference = block_forward(reference_block, x, 3, reference_casts)
    assert len(reference_casts) == 0  # weights that require grad are left to autocast
    torch.testing.assert_close(cast_once, reference, rtol=0, atol=0)  # bitwise: the same rounding of the same weights
    assert counter.count <= reference_counter.count - 8  # in_proj, out_proj, c_fc and c_proj: weights and biases

    with torch.no_grad():
        block.mlp.c_fc.weight.mul_(2)  # a changed weight (its version moves on) is cast again
        reference_block.mlp.c_fc.weight.mul_(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(
            block_forward(block, x, 3, casts), block_forward(reference_block, x, 3, reference_casts), rtol=0, atol=0
        )
    assert not torch.equal(
        block_forward(block, x, 3, casts), cast_once
    )  # outside autocast: fp32 weights, no cached copy


def test_cast_once_copies_made_under_inference_mode_serve_training(tiny_clip: nn.Module) -> None:
    """Lightning validates under inference_mode before training: the cached copies must not be inference tensors."""
    block = _perturbed(tiny_clip).visual.transformer.resblocks[0]
    x = torch.randn(2 * 5, block.attn.embed_dim)
    casts = CastCache()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        block_forward(block, x, 2, casts)
    prompts = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block_forward(block, prompts, 2, casts)
    out.float().square().sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0


def test_weights_made_under_inference_mode_are_left_to_autocast() -> None:
    casts = CastCache()
    with torch.inference_mode():
        weight = torch.randn(4, 4)  # an inference tensor: no version counter to validate a kept copy against
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert casts(weight) is weight
        assert casts(torch.randn(4, 4)).dtype == torch.bfloat16


def test_cpu_bf16_attention_runs_in_fp32_under_grad_mode_and_in_bf16_without() -> None:
    """The CPU's bf16 attention backward is several times slower than fp32's (BENCHMARKS.md): with a gradient to
    compute, attention takes the bf16 q, k, v in fp32; evaluation keeps the faster bf16 kernel."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8, generator=generator).bfloat16() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = attention(q, k, v, is_causal=True)
        with torch.no_grad():
            evaluated = attention(q, k, v, is_causal=True)
    assert trained.dtype == torch.float32 and evaluated.dtype == torch.bfloat16
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(trained, expected, rtol=0, atol=0)
    torch.testing.assert_close(evaluated, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=0, atol=0)
    assert attention(q.float(), k.float(), v.float()).dtype == torch.float32  # fp32 inputs: as they are
