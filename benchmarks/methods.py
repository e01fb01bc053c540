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


def build_method(name: str, clip: torch.nn.Module, classes: int, **settings: object):  # noqa: ANN201 - a CLIPMethod
    """The method ``name`` (with ``settings``) around the shared frozen ``clip``, built as ``CLIPMethod._build``
    builds it."""
    from dapt_lightning.methods import method_class

    torch.manual_seed(0)
    method = method_class(name)(clip_name="ViT-B-16", pretrained=None, **settings)
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
            method.batch_loss(images, labels)[1]["total"].backward()  # the method's loss terms, as it trains
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


DEEP_METHODS = ("ivlp", "maple", "promptsrc")


@dataclass(frozen=True)
class DeepPromptCost:
    """What deep prompts cost: each deep method's training step with the official 77-token text (``full``, the
    upstream computation) and the fast exact path (``auto``: truncated), and one text-tower forward + backward of a
    4-token context with a shared prefix (CoOp's fast path), truncated, and with deep prompts in every block."""

    steps: dict[str, tuple[float, float]]  # method -> (official 77-token step ms, fast step ms)
    text_ms: dict[str, float]  # "shared prefix", "truncated", "deep" -> text forward + backward ms


def deep_prompt_cost(clip: torch.nn.Module, classes: int, batch: int, repeats: int) -> DeepPromptCost:
    """Time the deep-prompt methods' steps on both text paths, and the text tower alone with and without a shared
    prefix (``DeepPromptCost``)."""
    size = clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    steps = {}
    for name in DEEP_METHODS:
        fns = {}
        for encoding in ("full", "auto"):
            method = build_method(name, clip, classes, text_encoding=encoding)

            def step(method=method) -> None:
                method.batch_loss(images, labels)[1]["total"].backward()
                method.zero_grad(set_to_none=True)

            fns[encoding] = step
        timed = interleaved_medians(fns, repeats, torch.device("cpu"))
        steps[name] = (timed["full"] * 1e3, timed["auto"] * 1e3)
    blocks = len(clip.transformer.resblocks)
    texts = {
        "shared prefix": build_method("coop", clip, classes, text_tokens=4, text_init="a photo of a"),
        "truncated": build_method("coop", clip, classes, text_init="a photo of a", text_encoding="truncated"),
        "deep": build_method("ivlp", clip, classes, text_depth=blocks, visual_depth=1),
    }
    assert texts["shared prefix"].model.text_encoder.name == "shared_prefix"

    def text_step(method) -> None:  # noqa: ANN001 - a CLIPMethod
        method.model.encode_text().sum().backward()
        method.zero_grad(set_to_none=True)

    timed = interleaved_medians({k: lambda m=m: text_step(m) for k, m in texts.items()}, repeats, torch.device("cpu"))
    return DeepPromptCost(steps, {name: seconds * 1e3 for name, seconds in timed.items()})


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


def deep_prompt_lines(cost: DeepPromptCost, classes: int, batch: int, blocks: int) -> list[str]:
    """The Markdown lines of what deep prompts cost."""
    lines = [
        "",
        f"Deep prompts, {classes} classes, batch {batch}: each method's training step with the official 77-token text "
        "(`--model.text_encoding full`, upstream's computation) and the fast exact path (`auto`: prompts truncated "
        f"after the last end of text), and the text tower alone (forward + backward of {classes} class prompts with a "
        f"4-token context): shared prefix (CoOp's fast path), truncated, and deep prompts in all {blocks} blocks "
        "(truncated: a prefix shared across classes would have to be recomputed at every prompted block):",
        "",
        "| method | official 77-token step (ms) | fast step (ms) | fast / official |",
        "|---|---:|---:|---:|",
    ]
    for name, (official, fast) in cost.steps.items():
        lines.append(f"| {name} | {official:.0f} | {fast:.0f} | {fast / official:.2f} |")
    shared, truncated, deep = (cost.text_ms[k] for k in ("shared prefix", "truncated", "deep"))
    lines += [
        "",
        f"Text tower forward + backward: shared prefix {shared:.0f} ms, truncated {truncated:.0f} ms "
        f"({truncated / shared:.2f}x), deep prompts {deep:.0f} ms ({deep / shared:.2f}x the shared prefix).",
    ]
    return lines


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
