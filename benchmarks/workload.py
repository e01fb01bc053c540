"""The benchmarked work: random-weight CLIPs, DAPT models, inputs, training steps, evaluation passes, timing."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from dapt_lightning.model.clip import ASSET_DIR

BETA_V, BETA_T = 10.0, 0.1  # any non-zero weights: every loss term must be computed and differentiated


def load_classnames(count: int) -> list[str]:
    """``count`` real ImageNet class names spread evenly over the 1000 (so their lengths are representative)."""
    names = (ASSET_DIR / "imagenet_classnames.txt").read_text().splitlines()
    if not 1 <= count <= len(names):
        raise ValueError(f"--classes: each count must be in 1..{len(names)}, got {count}")
    return [names[(i * len(names)) // count] for i in range(count)]


def build_clip(model: str, depth: int, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """A frozen random-weight open_clip model with ``depth`` layers in both towers."""
    import open_clip

    from dapt_lightning.model.clip import MODEL_CONFIG_DIR

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    config = open_clip.get_model_config(model)
    if config is None:
        raise ValueError(f"--model: unknown open_clip model {model!r}")
    vision_cfg = {**config["vision_cfg"], "layers": depth}
    text_cfg = {**config["text_cfg"], "layers": depth}
    torch.manual_seed(seed)
    clip = open_clip.create_model(model, pretrained=None, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True)
    clip = clip.float().eval().to(device)
    clip.requires_grad_(False)
    return clip


def build_model(
    clip: torch.nn.Module, classes: int, checkpointing: bool = False, seed: int = 0, compile_mode: str = "off"
):
    """A DAPT ``PromptedCLIP`` (class-shared text context + visual prompts) over ``classes`` real class names;
    the same ``seed`` gives the same prompts whatever the other settings."""
    from dapt_lightning.methods import CoOpVPT

    torch.manual_seed(seed)
    device = next(clip.parameters()).device
    # The prompt learner embeds its CPU token ids when built: build on the CPU, then move (shared) CLIP back.
    method = CoOpVPT(text_checkpointing=checkpointing, compile=compile_mode)  # DAPT's prompts, nothing loaded
    model = method.build_model(clip.cpu(), load_classnames(classes)).to(device)
    model.clip.eval()
    return model


def autocast_context(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "bf16-mixed":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepInputs:
    images: torch.Tensor
    labels: torch.Tensor
    prototypes: torch.Tensor


def make_inputs(model, batch: int, device: torch.device, seed: int = 0) -> StepInputs:
    generator = torch.Generator().manual_seed(seed)
    size = model.image_tower.image_size
    classes = len(model.classnames)
    dim = model.clip.text_projection.shape[1]
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    # Prototypes are means of unit vectors: norm below one, like the real ones.
    prototypes = torch.nn.functional.normalize(torch.randn(classes, dim, generator=generator), dim=-1) * 0.7
    return StepInputs(images.to(device), labels.to(device), prototypes.to(device))


def text_encoder(model, mode: str, layout: str = "auto") -> Callable[[], torch.Tensor]:
    """Normalised class text features by strategy ``mode``: ``auto`` is the model's own (compiled, if it is),
    any other mode (``full`` is the official computation) a strategy over the same tower and prompts."""
    from dapt_lightning.model.text_encoding import build_text_encoder

    if mode == "auto" and layout == "auto":
        return model.encode_text
    prompts = model.text_prompt if model.text_prompt is not None else model.fixed_prompts
    encoder = build_text_encoder(
        mode, model.text_tower, prompts, layout=layout, checkpointing=model.text_encoder.checkpointing
    )
    return lambda: torch.nn.functional.normalize(encoder(), dim=-1)


def make_train_step(model, mode: str, autocast: Callable, layout: str = "auto") -> Callable[[StepInputs], torch.Tensor]:
    """One DAPT training step: forward, every loss term, backward, SGD step on the prompts."""
    from dapt_lightning.losses import dapt_loss

    encode_text = text_encoder(model, mode, layout)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def step(inputs: StepInputs) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            image_features = model.encode_image(inputs.images)
            text_features = encode_text()
            logits = model.logit_scale * image_features @ text_features.t()
            terms = dapt_loss(logits, inputs.labels, image_features, text_features, inputs.prototypes, BETA_V, BETA_T)
        terms.total.backward()
        optimizer.step()
        return terms.total.detach()

    return step


def eval_naive(model, batches: list[torch.Tensor], autocast: Callable) -> torch.Tensor:
    """The official evaluation: every test batch runs the whole prompted model, text at 77 tokens."""
    predictions = []
    encode_text = text_encoder(model, "full")
    with torch.no_grad(), autocast():
        for images in batches:
            image_features = model.encode_image(images)
            text_features = encode_text()
            predictions.append((model.logit_scale * image_features @ text_features.t()).argmax(-1))
    return torch.cat(predictions)


def eval_fast(model, batches: Iterator[torch.Tensor] | list[torch.Tensor], autocast: Callable) -> torch.Tensor:
    """The prompts do not change during evaluation: encode the class texts once, then only images."""
    predictions = []
    with torch.inference_mode(), autocast():
        text_features = model.encode_text()
        for images in batches:
            image_features = model.encode_image(images)
            predictions.append((model.logit_scale * image_features @ text_features.t()).argmax(-1))
    return torch.cat(predictions)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    warmups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Median seconds of each callable, after a warm-up of each (``warmups``, default the callable itself),
    alternating them so that load from other processes hits both alike."""
    for name, fn in fns.items():
        (warmups or {}).get(name, fn)()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}
