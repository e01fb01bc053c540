"""The text-encoding strategies (truncated, shared prefix and its layouts) against the official 77-token
computation."""

from __future__ import annotations

import copy

import pytest
import torch
from open_clip.transformer import Transformer
from prompt_steps import (
    CLASSNAMES,
    assert_all_close,
    perturbed_tiny_clip,
    prompted_model,
    step_outputs,
    text_encoder,
)
from torch import nn

from benchmarks import OperatorCounter
from dapt_lightning.model.blocks import unsupported_block_reason
from dapt_lightning.model.prompted_clip import PromptedCLIP
from dapt_lightning.model.shared_prefix import SINGLE_ATTENTION_MAX_TOKENS, auto_max_buckets
from dapt_lightning.model.text_encoding import resolve_text_encoding


@pytest.fixture(scope="module", params=["quickgelu", "gelu"])
def perturbed_clip(request: pytest.FixtureRequest) -> nn.Module:
    return perturbed_tiny_clip(request.param)


_MODELS: dict[tuple[int, tuple], PromptedCLIP] = {}


def _model(clip: nn.Module, **kwargs) -> PromptedCLIP:
    """A fresh copy of a prompted model over ``clip`` (built once per configuration: tokenizing is slow)."""
    key = (id(clip), tuple(sorted(kwargs.items())))
    if key not in _MODELS:
        _MODELS[key] = prompted_model(clip, **kwargs)
    return copy.deepcopy(_MODELS[key])


@pytest.mark.parametrize("mode", ["truncated", "shared_prefix", "auto"])
def test_fast_paths_equal_full(perturbed_clip: nn.Module, mode: str) -> None:
    model = _model(perturbed_clip)
    full = step_outputs(model, "full")
    assert {"grad:text_prompt.txt_ctx", "grad:visual_prompt.vis_ctx"} <= full.keys()
    assert full["grad:text_prompt.txt_ctx"].norm() > 0
    assert_all_close(step_outputs(model, mode), full)


BF16_FORWARD_TOL, BF16_GRAD_TOL = 1e-3, 2e-2
"""Under bf16 autocast: how far a fast path's features, logits and loss terms (relative error) and its prompt
gradients may be from the official 77-token path's under the same autocast. bf16 itself moves the official path's
gradients 2-3e-2 from fp32's (measured on these tiny CLIPs), the features 5e-3."""


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("mode", ["truncated", "shared_prefix", "auto"])
def test_fast_paths_equal_full_under_bf16_autocast(perturbed_clip: nn.Module, mode: str) -> None:
    """`--trainer.precision bf16-mixed`: each fast path computes the official path's numbers to bf16's precision,
    adds no error of its own beyond bf16's, and keeps the prompts and their gradients in fp32."""
    model = _model(perturbed_clip)
    fp32 = step_outputs(model, "full")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = step_outputs(model, "full")
        fast = step_outputs(model, mode)
    assert full["text_features"].dtype == torch.bfloat16  # autocast did run the towers in bf16
    for key, reference in full.items():
        error = _relative_error(fast[key], reference)
        assert error <= (BF16_GRAD_TOL if key.startswith("grad:") else BF16_FORWARD_TOL), f"{key}: {error:.2e}"
        # No further from fp32 than the official computation under the same autocast is.
        assert _relative_error(fast[key], fp32[key]) <= 1.5 * _relative_error(reference, fp32[key]) + 1e-3, key
    assert {name: p.dtype for name, p in model.named_parameters() if p.requires_grad} == {
        "text_prompt.txt_ctx": torch.float32,
        "visual_prompt.vis_ctx": torch.float32,
    }
    assert fast["grad:text_prompt.txt_ctx"].dtype == fast["grad:visual_prompt.vis_ctx"].dtype == torch.float32


def test_auto_picks_shared_prefix_for_a_shared_context(perturbed_clip: nn.Module) -> None:
    model = _model(perturbed_clip)
    assert model.text_encoder.name == "shared_prefix"
    model.encode_text()
    plan = model.text_encoder.plan
    lengths = [length for length, _ in plan.buckets]
    assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths)
    assert sum(count for _, count in plan.buckets) == len(CLASSNAMES)
    assert any(count > 1 for _, count in plan.buckets)  # some classes really share a bucket
    assert lengths[-1] - lengths[-2] >= 10


@pytest.mark.parametrize("layout", ["single_attention", 1, "two_buckets", 3])
def test_merged_buckets_are_exact(perturbed_clip: nn.Module, layout: str | int) -> None:
    """Fewer buckets pad short suffixes with their own following tokens, and no buckets (a single attention) runs
    one attention over all packed tokens under a block mask (both GPU defaults): still exact."""
    model = _model(perturbed_clip, text_layout=layout)
    merged = step_outputs(model)
    expected_buckets = {"single_attention": 0, "two_buckets": 2}.get(layout, layout)
    assert len(model.text_encoder.plan.buckets) == expected_buckets
    assert_all_close(merged, step_outputs(model, "full"))


def test_unknown_layout_names_the_setting(perturbed_clip: nn.Module) -> None:
    with pytest.raises(ValueError, match="--model.text_layout must be one of auto, per_length"):
        _model(perturbed_clip, text_layout="diagonal")


def test_auto_buckets_by_device_and_size() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert auto_max_buckets(cpu, 100) is None  # compute dominates: no padding at all
    assert auto_max_buckets(gpu, SINGLE_ATTENTION_MAX_TOKENS) == 0  # launches dominate: one attention call
    assert auto_max_buckets(gpu, SINGLE_ATTENTION_MAX_TOKENS + 1) == 2  # the quadratic mask would cost more


def test_single_attention_dispatches_far_fewer_operators_than_buckets(perturbed_clip: nn.Module) -> None:
    """Why GPUs use it: a DAPT step at CLIP's sizes is bound by per-operator host work, not by attention FLOPs."""
    model = _model(perturbed_clip)
    counts = {}
    for layout in ("single_attention", "two_buckets"):
        encoder = text_encoder(model, "shared_prefix", layout)
        encoder().sum().backward()  # builds the plan and masks outside the count
        with OperatorCounter() as counter:
            encoder().sum().backward()
        counts[layout] = counter.count
    assert counts["single_attention"] < 0.6 * counts["two_buckets"], counts


def test_block_mask_lets_a_token_see_the_prefix_and_its_own_class_only(perturbed_clip: nn.Module) -> None:
    model = _model(perturbed_clip, text_layout="single_attention")
    model.encode_text()
    encoder = model.text_encoder
    plan, prefix = encoder.plan, model.text_prompt.num_tokens + 1
    (mask,) = encoder.masks(plan, prefix)
    a, b = plan.eot[0].item() + prefix, plan.eot[1].item() + prefix  # the EOT rows of classes 0 and 1
    assert mask[:prefix, :prefix].equal(torch.ones(prefix, prefix, dtype=torch.bool).tril())
    assert not mask[:prefix, prefix:].any()  # the prefix never sees a class's tokens
    assert mask[a, :prefix].all() and mask[a, prefix : a + 1].all() and not mask[a, a + 1 :].any()
    assert mask[b, :prefix].all() and not mask[b, prefix : a + 1].any() and mask[b, a + 1 : b + 1].all()


@pytest.mark.parametrize("kwargs", [{"class_specific_context": True}, {"text_prompts": False}])
def test_fallback_is_truncated_and_exact(perturbed_clip: nn.Module, kwargs: dict) -> None:
    model = _model(perturbed_clip, **kwargs)
    assert model.text_encoder.name == "truncated"
    assert_all_close(step_outputs(model), step_outputs(model, "full"))
    with pytest.raises(ValueError, match="text_encoding shared_prefix"):
        _model(perturbed_clip, text_encoding="shared_prefix", **kwargs)


def test_unknown_encoding_names_the_setting(perturbed_clip: nn.Module) -> None:
    with pytest.raises(ValueError, match="--model.text_encoding"):
        _model(perturbed_clip, text_encoding="fastest")


def test_custom_blocks_fall_back_to_truncated(perturbed_clip: nn.Module) -> None:
    assert unsupported_block_reason(perturbed_clip.transformer) is None
    custom = Transformer(width=64, layers=1, heads=2, block_type="custom")
    assert "CustomResidualAttentionBlock" in unsupported_block_reason(custom)
    model = _model(perturbed_clip)
    model.text_tower.transformer.resblocks[0] = custom.resblocks[0]
    assert resolve_text_encoding("auto", model.text_tower, model.text_prompt) == "truncated"
    assert resolve_text_encoding("auto", model.text_tower, model.fixed_prompts) == "truncated"


def test_sequence_first_layout(perturbed_clip: nn.Module) -> None:
    """A transformer run as (L, N, D) gives the same full features, and the shared prefix still matches."""
    model = _model(perturbed_clip)
    batch_first = step_outputs(model, "full")
    transformer = model.text_tower.transformer
    transformer.batch_first = False
    for block in transformer.resblocks:
        block.attn.batch_first = False
    full = step_outputs(model, "full")
    assert_all_close(full, batch_first)
    assert_all_close(step_outputs(model, "shared_prefix"), full)


@pytest.mark.parametrize("mode", ["full", "shared_prefix"])
def test_text_checkpointing_is_exact(perturbed_clip: nn.Module, mode: str) -> None:
    reference = step_outputs(_model(perturbed_clip, text_encoding=mode))
    checkpointed = _model(perturbed_clip, text_encoding=mode, text_checkpointing=True)
    assert checkpointed.text_encoder.checkpointing
    assert not checkpointed.text_tower.transformer.grad_checkpointing  # the strategy's own, not CLIP's flag
    assert_all_close(step_outputs(checkpointed), reference)


def test_inference_mode_first_then_training(perturbed_clip: nn.Module) -> None:
    """Lightning validates under inference_mode; the cached plan must still serve later backward passes."""
    model = _model(perturbed_clip)
    with torch.inference_mode():
        evaluated = model.encode_text()
    trained = step_outputs(model)
    torch.testing.assert_close(trained["text_features"], evaluated.clone(), rtol=0, atol=0)
    keys = set(model.state_dict())
    assert keys == set(_model(perturbed_clip).state_dict())  # the encoder adds nothing to checkpoints


def test_plan_follows_device_moves_and_new_tokens(perturbed_clip: nn.Module) -> None:
    model = _model(perturbed_clip)
    first = model.encode_text().detach()
    model.text_prompt.tokens = model.text_prompt.tokens.clone()  # a new buffer object: the plan is rebuilt
    plan = model.text_encoder.plan
    second = model.encode_text().detach()
    assert model.text_encoder.plan is not plan
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_lean_text_blocks_equal_open_clip_transformer(perturbed_clip: nn.Module) -> None:
    """The full and truncated paths run the blocks lean with causal attention; open_clip's transformer agrees."""
    model = _model(perturbed_clip)
    tower = model.text_tower
    assert tower.causal and tower.lean_blocks
    embeddings = model.text_prompt(None).detach().requires_grad_()
    eot = model.text_prompt.pool_positions
    lean = tower(embeddings, eot)
    lean_grad = torch.autograd.grad(lean.square().sum(), embeddings)[0]
    tower.transformer.grad_checkpointing = True  # open_clip's own transformer runs then
    try:
        assert not tower.lean_blocks
        reference = tower(embeddings, eot)
        reference_grad = torch.autograd.grad(reference.square().sum(), embeddings)[0]
    finally:
        tower.transformer.grad_checkpointing = False
    torch.testing.assert_close(lean, reference, rtol=1e-5, atol=1e-6)
    assert ((lean_grad - reference_grad).norm() / reference_grad.norm()).item() < 1e-5
