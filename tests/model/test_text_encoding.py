"""The exact text fast paths (truncated, shared prefix) against the official 77-token computation."""

from __future__ import annotations

import copy

import pytest
import torch
from dapt_lightning.model.text_fastpath import SINGLE_ATTENTION_MAX_TOKENS, auto_max_buckets, resolve_text_encoding
from open_clip.transformer import Transformer
from prompt_steps import (
    CLASSNAMES,
    assert_all_close,
    perturbed_tiny_clip,
    prompted_model,
    step_outputs,
)
from torch import nn

import benchmarks as bench
from benchmarks import OperatorCounter
from benchmarks.throughput import time_steady_loader
from dapt_lightning.model.blocks import unsupported_block_reason
from dapt_lightning.model.prompted_clip import PromptedCLIP


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


def test_auto_picks_shared_prefix_for_a_shared_context(perturbed_clip: nn.Module) -> None:
    model = _model(perturbed_clip)
    assert resolve_text_encoding("auto", model.text_tower, model.text_prompt) == "shared_prefix"
    model.encode_text("auto")
    plan = model._shared_prefix_encoder._plan
    lengths = [length for length, _ in plan.buckets]
    assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths)
    assert sum(count for _, count in plan.buckets) == len(CLASSNAMES)
    assert any(count > 1 for _, count in plan.buckets)  # some classes really share a bucket
    assert lengths[-1] - lengths[-2] >= 10


@pytest.mark.parametrize("max_buckets", [0, 1, 2, 3])
def test_merged_buckets_are_exact(perturbed_clip: nn.Module, max_buckets: int) -> None:
    """Fewer buckets pad short suffixes with their own following tokens, and no buckets (0) runs one attention over
    all packed tokens under a block mask (both GPU defaults): still exact."""
    model = _model(perturbed_clip)
    full = step_outputs(model, "full")
    model.encode_text("shared_prefix")
    model._shared_prefix_encoder.max_buckets = max_buckets
    merged = step_outputs(model, "shared_prefix")
    assert len(model._shared_prefix_encoder._plan.buckets) == max_buckets
    assert_all_close(merged, full)


def test_auto_buckets_by_device_and_size() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert auto_max_buckets(cpu, 100) is None  # compute dominates: no padding at all
    assert auto_max_buckets(gpu, SINGLE_ATTENTION_MAX_TOKENS) == 0  # launches dominate: one attention call
    assert auto_max_buckets(gpu, SINGLE_ATTENTION_MAX_TOKENS + 1) == 2  # the quadratic mask would cost more


def test_single_attention_dispatches_far_fewer_operators_than_buckets(perturbed_clip: nn.Module) -> None:
    """Why GPUs use it: a DAPT step at CLIP's sizes is bound by per-operator host work, not by attention FLOPs."""
    model = _model(perturbed_clip)
    model.encode_text("shared_prefix")
    counts = {}
    for max_buckets in (0, 2):
        model._shared_prefix_encoder.max_buckets = max_buckets
        model.encode_text("shared_prefix").sum().backward()  # builds the plan and masks outside the count
        with OperatorCounter() as counter:
            model.encode_text("shared_prefix").sum().backward()
        counts[max_buckets] = counter.count
    assert counts[0] < 0.6 * counts[2], counts


def test_block_mask_lets_a_token_see_the_prefix_and_its_own_class_only(perturbed_clip: nn.Module) -> None:
    model = _model(perturbed_clip)
    model.encode_text("shared_prefix")
    encoder = model._shared_prefix_encoder
    encoder.max_buckets = 0
    model.encode_text("shared_prefix")
    plan, prefix = encoder._plan, model.text_prompt.num_tokens + 1
    mask = encoder._block_mask(plan, prefix)
    a, b = plan.eot[0].item() + prefix, plan.eot[1].item() + prefix  # the EOT rows of classes 0 and 1
    assert mask[:prefix, :prefix].equal(torch.ones(prefix, prefix, dtype=torch.bool).tril())
    assert not mask[:prefix, prefix:].any()  # the prefix never sees a class's tokens
    assert mask[a, :prefix].all() and mask[a, prefix : a + 1].all() and not mask[a, a + 1 :].any()
    assert mask[b, :prefix].all() and not mask[b, prefix : a + 1].any() and mask[b, a + 1 : b + 1].all()


@pytest.mark.parametrize("kwargs", [{"class_specific_context": True}, {"text_prompts": False}])
def test_fallback_is_truncated_and_exact(perturbed_clip: nn.Module, kwargs: dict) -> None:
    model = _model(perturbed_clip, **kwargs)
    assert resolve_text_encoding("auto", model.text_tower, model.text_prompt) == "truncated"
    assert_all_close(step_outputs(model, "auto"), step_outputs(model, "full"))
    assert model._shared_prefix_encoder is None
    with pytest.raises(ValueError, match="text_encoding shared_prefix"):
        model.encode_text("shared_prefix")


def test_unknown_encoding_names_the_setting(perturbed_clip: nn.Module) -> None:
    with pytest.raises(ValueError, match="--model.text_encoding"):
        _model(perturbed_clip).encode_text("fastest")


def test_custom_blocks_fall_back_to_truncated(perturbed_clip: nn.Module) -> None:
    assert unsupported_block_reason(perturbed_clip.transformer) is None
    custom = Transformer(width=64, layers=1, heads=2, block_type="custom")
    assert "CustomResidualAttentionBlock" in unsupported_block_reason(custom)
    model = _model(perturbed_clip)
    model.text_tower.transformer.resblocks[0] = custom.resblocks[0]
    assert resolve_text_encoding("auto", model.text_tower, model.text_prompt) == "truncated"


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
    reference = step_outputs(_model(perturbed_clip), mode)
    checkpointed = _model(perturbed_clip, text_checkpointing=True)
    assert checkpointed.text_tower.transformer.grad_checkpointing
    assert_all_close(step_outputs(checkpointed, mode), reference)


def test_inference_mode_first_then_training(perturbed_clip: nn.Module) -> None:
    """Lightning validates under inference_mode; the cached plan must still serve later backward passes."""
    model = _model(perturbed_clip)
    with torch.inference_mode():
        evaluated = model.encode_text("shared_prefix")
    trained = step_outputs(model, "shared_prefix")
    torch.testing.assert_close(trained["text_features"], evaluated.clone(), rtol=0, atol=0)
    keys = set(model.state_dict())
    assert keys == set(_model(perturbed_clip).state_dict())  # the encoder adds nothing to checkpoints


def test_plan_follows_device_moves_and_new_tokens(perturbed_clip: nn.Module) -> None:
    model = _model(perturbed_clip)
    first = model.encode_text("shared_prefix").detach()
    model.text_prompt.tokens = model.text_prompt.tokens.clone()  # a new buffer object: the plan is rebuilt
    plan = model._shared_prefix_encoder._plan
    second = model.encode_text("shared_prefix").detach()
    assert model._shared_prefix_encoder._plan is not plan
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def test_bench_tiny_table(tmp_path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\nkept text\n")
    argv = [
        "--model",
        "dapt-tiny",
        "--depth",
        "1",
        "--classes",
        "3,5",
        "--batch",
        "2",
        "--test-batch",
        "2",
        "--eval-images",
        "4",
        "--repeats",
        "1",
        "--memory",
        "off",
        "--throughput",
        "--throughput-steps",
        "2",
        "--workers",
        "0",
        "--compile",
        "default",
        "--profile",
        "--text-layouts",
        "--output",
        str(output),
    ]
    report = bench.main(argv)
    for classes in ("3", "5"):
        for measure in ("train step (ms)", "eval pass, 4 images (s)"):
            assert any(row.startswith(f"| {classes} | {measure} |") for row in report.splitlines())
    header = "| classes | measurement | naive | fast | fast / naive | fast, compile default | compiled / naive |"
    assert header in report
    train_rows = [
        row.split("|")[1:-1] for row in report.splitlines() if row.startswith(("| 3 | train step", "| 5 | train step"))
    ]
    assert len(train_rows) == 2 and all(float(cells[5]) > 0 and float(cells[6]) > 0 for cells in train_rows)
    throughput_rows = [row for row in report.splitlines() if row.startswith(("| 3 | fast", "| 5 | fast"))]
    assert len(throughput_rows) == 2 and all("| fast, compile default |" in row for row in throughput_rows)
    assert "the graphs): 3 classes: training step" in report
    profile_table = report.split("Profile of 3 fast training steps")[1]
    profiled = [row for row in profile_table.splitlines() if row.startswith(("| fast |", "| fast, compile default |"))]
    assert len(profiled) == 2 and all(float(row.split("|")[2]) > 0 for row in profiled)
    eager_operators = int(profiled[0].split("|")[5])  # counted for the eager step only
    layout_table = report.split("Shared-prefix text layouts")[1]
    layout_rows = [row.split("|")[1:-1] for row in layout_table.splitlines() if row.startswith(("| 3 |", "| 5 |"))]
    assert len(layout_rows) == 2 and all(float(cell) > 0 for cells in layout_rows for cell in cells[1:])
    assert eager_operators > 100 and profiled[1].split("|")[5].strip() == "n/a"
    assert "train img/s (model)" in report and "eval img/s (end to end)" in report
    written = output.read_text()
    assert "kept text" in written and written.count(bench.section_marker("cpu")) == 1
    bench.main(argv)  # a second run replaces its section instead of appending another
    assert output.read_text().count(bench.section_marker("cpu")) == 1


def test_bench_end_to_end_timing_leaves_out_the_worker_start() -> None:
    """The first batch of a DataLoader waits for its workers to start: a one-off cost, not the pipeline's rate."""
    import time

    def batches():
        time.sleep(1.0)  # the workers starting
        yield from range(5)

    consumed = []
    seconds = time_steady_loader(batches(), consumed.extend, torch.device("cpu"))
    assert consumed == [0, 1, 2, 3, 4] and seconds < 0.5


def test_bench_memory_probe_runs_in_a_subprocess() -> None:
    config = bench.ProbeConfig(
        model="dapt-tiny", depth=1, classes=3, batch=2, mode="auto", checkpointing=False, precision="32"
    )
    peak = bench.probe_train_memory(config, device="cpu")
    assert peak > 0


def test_lean_text_blocks_equal_open_clip_transformer(perturbed_clip: nn.Module) -> None:
    """The full and truncated paths run the blocks lean with causal attention; open_clip's transformer agrees."""
    model = _model(perturbed_clip)
    tower = model.text_tower
    assert tower.causal and tower.lean_blocks
    embeddings = model.text_prompt(None).detach().requires_grad_()
    eot = model.text_prompt.eot_positions
    lean = tower(embeddings, eot)
    lean_grad = torch.autograd.grad(lean.square().sum(), embeddings)[0]
    tower.transformer.grad_checkpointing = True  # open_clip's own path (it handles checkpointing)
    try:
        assert not tower.lean_blocks
        reference = tower(embeddings, eot)
        reference_grad = torch.autograd.grad(reference.square().sum(), embeddings)[0]
    finally:
        tower.transformer.grad_checkpointing = False
    torch.testing.assert_close(lean, reference, rtol=1e-5, atol=1e-6)
    assert ((lean_grad - reference_grad).norm() / reference_grad.norm()).item() < 1e-5
