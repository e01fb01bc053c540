"""Every registered method side by side: its training step (forward, its loss terms, backward, SGD step) and an
evaluation pass, on the same random CLIP and class names; and CoCoOp's class texts encoded image by image (as the
official code runs at batch 1) against all of a batch's images in one text-tower call."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.workload import interleaved_medians, load_classnames

SHOTS = 16
"""Training images per class in Tip-Adapter's cache."""


@dataclass(frozen=True)
class MethodTiming:
    """One method's median times: a training step of ``batch`` images and an evaluation pass."""

    method: str
    train_ms: float | None
    eval_s: float


def build_method(name: str, clip: torch.nn.Module, classes: int):  # noqa: ANN201 - a CLIPMethod
    """The method ``name`` around the shared frozen ``clip``, built as ``CLIPMethod._build`` builds it."""
    from dapt_lightning.methods import method_class

    torch.manual_seed(0)
    method = method_class(name)(clip_name="ViT-B-16", pretrained=None)
    names = load_classnames(classes)
    method.model = method.build_model(clip, names)
    method.build_state(classes, method.model.text_tower.output_dim)
    dim = method.model.text_tower.output_dim
    if hasattr(method, "set_prototypes"):  # DAPT's intra-dispersion targets: any unit vectors
        method.set_prototypes(F.normalize(torch.randn(classes, dim), dim=-1))
    if hasattr(method, "cache_values"):  # Tip-Adapter's cache, as fitting builds it: 16 shots of every class
        labels = torch.arange(classes).repeat_interleave(SHOTS)
        method.cache_keys = torch.nn.Parameter(F.normalize(torch.randn(len(labels), dim), dim=-1))
        method.cache_values = F.one_hot(labels, classes).float()
    if hasattr(method, "set_classifier"):  # the linear probe: any fitted classifier (its fit is closed-form)
        method.set_classifier(torch.randn(classes, dim).numpy(), torch.zeros(classes).numpy(), classes)
    return method


def time_methods(
    clip: torch.nn.Module, classes: int, batch: int, eval_images: int, test_batch: int, repeats: int
) -> list[MethodTiming]:
    """Median training-step and evaluation-pass times of every registered method, on the CPU."""
    from dapt_lightning.methods import list_methods
    from dapt_lightning.model.lora import detach_lora

    generator = torch.Generator().manual_seed(0)
    size = clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    test = [torch.randn(test_batch, 3, size, size, generator=generator) for _ in range(eval_images // test_batch)]
    timings = []
    for name in list_methods():
        method = build_method(name, clip, classes)
        trainable = [p for p in method.parameters() if p.requires_grad]
        # The linear probe is fitted by scikit-learn on cached features, not stepped: no step to time.
        stepped = trainable and not hasattr(method, "set_classifier")
        optimizer = torch.optim.SGD(trainable, lr=1e-3, momentum=0.9) if stepped else None

        def step(method=method, optimizer=optimizer) -> None:
            logits, image_features, text_features = method.forward_features(images)
            method.loss(logits, labels, image_features, text_features)["total"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def evaluate(method=method) -> None:
            method.eval()  # as `dapt test` runs it (CLIP-LoRA merges its updates, dropout is off)
            with torch.no_grad():
                text = method.model.encode_text()  # once per evaluation, as CLIPMethod does
                for pixels in test:
                    method.forward_features(pixels, text)
            method.train()

        fns = {"eval": evaluate} | ({"train": step} if optimizer is not None else {})
        timed = interleaved_medians(fns, repeats, torch.device("cpu"))
        if hasattr(method, "lora"):  # CLIP-LoRA's adapters sit on the shared CLIP's blocks: off for the next method
            detach_lora(clip.transformer.resblocks)
            detach_lora(clip.visual.transformer.resblocks)
        train = timed.get("train")
        timings.append(MethodTiming(name, None if train is None else train * 1e3, timed["eval"]))
    return timings


def cocoop_batched_speedup(clip: torch.nn.Module, classes: int, batch: int, repeats: int) -> tuple[float, float]:
    """Seconds of CoCoOp's training forward + backward for ``batch`` images: image by image (the official loop at
    batch 1), and all at once."""
    method = build_method("cocoop", clip, classes)
    size = clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(batch) % classes

    def one_by_one() -> None:
        for index in range(batch):
            logits, _, _ = method.forward_features(images[index : index + 1])
            (F.cross_entropy(logits, labels[index : index + 1]) / batch).backward()

    def batched() -> None:
        logits, _, _ = method.forward_features(images)
        F.cross_entropy(logits, labels).backward()

    timed = interleaved_medians({"one_by_one": one_by_one, "batched": batched}, repeats, torch.device("cpu"))
    return timed["one_by_one"], timed["batched"]


def methods_table(timings: list[MethodTiming], cocoop: tuple[float, float], classes: int, batch: int) -> list[str]:
    """The Markdown lines of the per-method comparison."""
    by_name = {t.method: t for t in timings}
    reference = by_name["coop"]
    lines = [
        "",
        f"Every method, {classes} classes: training step of batch {batch} (forward, the method's loss terms, backward, "
        "SGD step) and evaluation pass (text encoded once, as in `dapt test`), median times. Tip-Adapter-F's cache "
        f"holds {SHOTS} images per class; the linear probe is fitted in closed form (scikit-learn on cached "
        "features), so it has no step:",
        "",
        "| method | train step (ms) | vs CoOp | eval pass (s) | vs CoOp |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in timings:
        train = "n/a" if t.train_ms is None else f"{t.train_ms:.0f}"
        train_ratio = "n/a" if t.train_ms is None else f"{t.train_ms / reference.train_ms:.2f}"
        lines.append(f"| {t.method} | {train} | {train_ratio} | {t.eval_s:.2f} | {t.eval_s / reference.eval_s:.2f} |")
    one, batched = cocoop
    lines += [
        "",
        f"CoCoOp's training forward + backward for {batch} images: image by image (the official loop at batch 1) "
        f"{one:.2f} s, all at once {batched:.2f} s (speed-up {one / batched:.2f}x).",
    ]
    return lines
