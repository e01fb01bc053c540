"""``--model.compile``: the compiled towers give the eager numbers (features, loss terms, prompt gradients)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from prompt_steps import (
    CLASSNAMES,
    assert_all_close,
    build_prompted,
    perturb,
    perturbed_tiny_clip,
    prompted_model,
    step_outputs,
)
from tiny import prompts_of, read_test_metrics, tiny_args
from torch import nn
from torch._dynamo.utils import counters

from dapt_lightning.checkpoint import prompt_only_state
from dapt_lightning.cli import main
from dapt_lightning.model.compilation import may_use_cuda_graphs
from dapt_lightning.model.prompted_clip import PromptedCLIP
from dapt_lightning.model.shared_prefix import SharedPrefixTextEncoder


@pytest.fixture(scope="module")
def perturbed_clip() -> nn.Module:
    return perturbed_tiny_clip()


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch, so a recompile limit hit by an earlier test cannot make one run eager."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _pair(clip: nn.Module, compile_mode: str, **kwargs) -> tuple[PromptedCLIP, PromptedCLIP]:
    """An eager and a compiled model with the same prompts over copies of ``clip``."""
    eager = prompted_model(clip, **kwargs)
    compiled = build_prompted(copy.deepcopy(clip), CLASSNAMES, compile=compile_mode, **kwargs)
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def _compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"text_encoding": "shared_prefix"},
        {"text_encoding": "shared_prefix", "text_layout": "single_attention"},  # the GPU layout, forced on the CPU
        {"text_encoding": "truncated", "class_specific_context": True},
    ],
    ids=["shared_prefix", "shared_prefix_single_attention", "truncated"],
)
def test_compiled_training_step_equals_eager(perturbed_clip: nn.Module, kwargs: dict) -> None:
    eager, compiled = _pair(perturbed_clip, "default", **kwargs)
    assert compiled.text_encoder.name == kwargs["text_encoding"]
    reference = step_outputs(eager)
    assert _compiled_graphs() == 0
    first = step_outputs(compiled)
    assert _compiled_graphs() >= 2, "the image tower and the text encoder should both have been compiled"
    if kwargs.get("text_layout") == "single_attention":
        assert compiled.text_encoder.plan.buckets == ()  # really the single block-masked attention
    assert_all_close(first, reference)
    # A second step re-uses the compiled graphs (no recompilation) and still agrees.
    graphs = _compiled_graphs()
    assert_all_close(step_outputs(compiled), reference)
    assert _compiled_graphs() == graphs


def test_compiled_evaluation_equals_eager(perturbed_clip: nn.Module) -> None:
    """Evaluation runs under inference_mode with other batch sizes than training (a last, smaller batch too)."""
    eager, compiled = _pair(perturbed_clip, "default")
    size = eager.image_tower.image_size
    batches = [torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n)) for n in (5, 5, 3)]
    with torch.inference_mode():
        text_eager, text_compiled = eager.encode_text(), compiled.encode_text()
        for images in batches:
            torch.testing.assert_close(compiled.encode_image(images), eager.encode_image(images), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(text_compiled, text_eager, rtol=1e-5, atol=1e-6)
    assert _compiled_graphs() >= 2


def test_compile_keeps_checkpoint_keys(perturbed_clip: nn.Module) -> None:
    eager, compiled = _pair(perturbed_clip, "reduce-overhead")
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    kept = prompt_only_state(compiled.state_dict(), compiled.clip)
    assert kept.keys() == prompt_only_state(eager.state_dict(), eager.clip).keys()
    assert kept.keys() == {"text_prompt.txt_ctx", "visual_prompt.vis_ctx"}


def test_cuda_graph_modes_clone_outputs_only_on_cuda() -> None:
    assert not may_use_cuda_graphs("default")
    assert not may_use_cuda_graphs("max-autotune-no-cudagraphs")
    assert may_use_cuda_graphs("reduce-overhead") == torch.cuda.is_available()


def test_unknown_compile_mode_names_the_setting(perturbed_clip: nn.Module) -> None:
    with pytest.raises(ValueError, match="--model.compile must be one of off, default, reduce-overhead"):
        build_prompted(perturbed_clip, CLASSNAMES, compile="fast")


@pytest.mark.slow
def test_compiled_fit_and_test_match_eager(synthetic_root: Path, tmp_path: Path) -> None:
    """`dapt fit --model.compile default` trains to the eager prompts (float order aside) and tests the same."""
    runs = {}
    for mode in ("off", "default"):
        out = tmp_path / mode
        args = tiny_args(synthetic_root, out, "--trainer.max_epochs", "2", "--run.test_after_fit", "true")
        main(["fit", *args, "--model.compile", mode])
        runs[mode] = out
    assert _compiled_graphs() >= 2
    eager, compiled = (prompts_of(runs[m] / "checkpoints" / "last.ckpt") for m in ("off", "default"))
    assert eager.keys() == compiled.keys() and len(eager) >= 3
    for name, reference in eager.items():
        torch.testing.assert_close(compiled[name], reference, rtol=1e-4, atol=1e-5, msg=name)
    eager_metrics, compiled_metrics = (read_test_metrics(runs[m]) for m in ("off", "default"))
    # 144 test images: rounding differences may flip at most a near-tie prediction.
    assert abs(compiled_metrics["test/acc"] - eager_metrics["test/acc"]) <= 1 / 144 + 1e-9


def test_models_compiled_in_one_process_each_use_their_own_weights(perturbed_clip: nn.Module) -> None:
    """`dapt sweep` builds one model per run in the same process: compiled code is shared, weights are not."""
    size = perturbed_clip.visual.image_size[0]
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(4))
    for seed in (1, 2):
        clip = perturb(copy.deepcopy(perturbed_clip), seed=10 + seed)
        eager, compiled = _pair(clip, "default")
        with torch.inference_mode():
            torch.testing.assert_close(compiled.encode_image(images), eager.encode_image(images), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(compiled.encode_text(), eager.encode_text(), rtol=1e-5, atol=1e-6)
    assert _compiled_graphs() >= 2


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
@pytest.mark.parametrize("layout", ["per_length", "single_attention"])
def test_towers_trace_as_single_graphs(perturbed_clip: nn.Module, layout: str, autocast: bool) -> None:
    """A graph break would split a compiled tower into pieces run one after another; under CUDA graphs each piece
    is its own replay with its own memory. The image tower, the text tower and the shared-prefix layer stack
    (per-length buckets, or the single block-masked attention) each trace whole, in fp32 and under the bf16
    autocast of ``--trainer.precision bf16-mixed`` (after an eager call has kept cast copies of the weights)."""
    model = prompted_model(perturbed_clip)
    images = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model.image_tower(images, model.visual_prompt())
        assert (len(model.image_tower.casts) > 0) == autocast  # the tower keeps its cast weights
        _assert_towers_trace_whole(model, images, layout)


def _assert_towers_trace_whole(model: PromptedCLIP, images: torch.Tensor, layout: str) -> None:
    for prompts in (model.visual_prompt(), None):
        explained = torch._dynamo.explain(model.image_tower.forward)(images, prompts)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    text_prompt = model.text_prompt
    explained = torch._dynamo.explain(model.text_tower.forward)(text_prompt(None), text_prompt.pool_positions)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    encoder = SharedPrefixTextEncoder(model.text_tower, text_prompt, layout=layout)
    prefix = torch.cat([text_prompt.token_prefix[0], text_prompt.txt_ctx], dim=0)
    plan = encoder.plan_for(text_prompt.tokens, prefix.shape[0])
    masks = encoder.masks(plan, prefix.shape[0])
    packed = torch.randn(prefix.shape[0] + plan.rows.numel(), model.text_tower.width)
    explained = torch._dynamo.explain(encoder._layers)(packed, prefix.shape[0], plan.buckets, masks)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_bf16_compiled_steps_do_not_recompile(perturbed_clip: nn.Module) -> None:
    """What `--trainer.precision bf16-mixed --model.compile ...` does over an epoch: training steps that move the
    prompts, an evaluation under inference_mode, more training steps. Each of those compiles its graphs once
    (a recompile every step would cost far more than it saves), and the compiled numbers follow the eager ones to
    bf16 rounding."""
    eager, compiled = _pair(perturbed_clip, "default")
    size = eager.image_tower.image_size
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(5))

    def train_then_evaluate(model: PromptedCLIP, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outputs = step_outputs(model)
            optimizer.step()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return outputs["total"], model.encode_image(images) @ model.encode_text().t()

    rounds = (2, 1, 3)
    train_then_evaluate(compiled, rounds[0])
    graphs = _compiled_graphs()
    assert graphs >= 4, "training and inference-mode graphs of both towers"
    for steps in rounds[1:]:
        total, logits = train_then_evaluate(compiled, steps)
    assert _compiled_graphs() == graphs, "a later step or evaluation compiled again"
    for steps in rounds:
        reference_total, reference_logits = train_then_evaluate(eager, steps)
    torch.testing.assert_close(total, reference_total, rtol=0.05, atol=0.0)
    torch.testing.assert_close(logits, reference_logits, rtol=0.0, atol=0.05 * reference_logits.abs().max().item())
