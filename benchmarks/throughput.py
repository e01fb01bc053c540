"""Images/s of the fast path, model-only and end to end with a DataLoader, and the achieved matmul rate."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable, Iterator

import torch

from benchmarks.workload import (
    StepInputs,
    autocast_context,
    eval_fast,
    make_inputs,
    make_train_step,
    synchronize,
    time_call,
)
from dapt_lightning.data.transforms import CLIP_MEAN, CLIP_STD


def text_flops(model, mode: str) -> float:
    """Forward matmul FLOPs of the text tower for all classes (attention counted over the computed rectangles)."""
    transformer = model.text_tower.transformer
    width, layers = model.text_tower.width, len(transformer.resblocks)
    mlp = transformer.resblocks[0].mlp.c_fc.out_features
    per_token = 2 * (4 * width * width + 2 * width * mlp)  # q, k, v, out projections and the MLP
    eot = model.text_prompt.pool_positions.tolist()
    if mode == "full":
        length = model.text_tower.context_length
        tokens, attention = len(eot) * length, len(eot) * 4 * length * length * width
    else:  # shared prefix: the prefix once, each class's own tokens against prefix + themselves
        prefix = 1 + model.text_prompt.num_tokens
        suffixes = [e - prefix + 1 for e in eot]
        tokens = prefix + sum(suffixes)
        attention = 4 * prefix * prefix * width + sum(4 * s * (prefix + s) * width for s in suffixes)
    projection = 2 * width * model.clip.text_projection.shape[1] * len(eot)
    return layers * (tokens * per_token + attention) + projection


def image_tokens(model) -> tuple[int, int]:
    """The prompted ViT's sequence: (patches, tokens per image = class token + patches + visual prompts)."""
    patch_h, patch_w = model.image_tower.patch_size
    patches = (model.image_tower.image_size // patch_h) * (model.image_tower.image_size // patch_w)
    prompts = model.visual_prompt.vis_ctx.shape[0] if model.visual_prompt is not None else 0
    return patches, 1 + patches + prompts


def image_mlp_width(model) -> int:
    """The hidden width of the image tower's MLP."""
    return model.image_tower.visual.transformer.resblocks[0].mlp.c_fc.out_features


def image_flops(model) -> tuple[float, float]:
    """Per-image forward FLOPs of the prompted ViT: (transformer + projection, patch embedding)."""
    visual = model.image_tower.visual
    width = model.image_tower.width
    layers = len(visual.transformer.resblocks)
    mlp = image_mlp_width(model)
    patch_h, patch_w = model.image_tower.patch_size
    patches, n = image_tokens(model)
    blocks = layers * (2 * n * (4 * width * width + 2 * width * mlp) + 4 * n * n * width)
    projection = 2 * width * visual.proj.shape[1]
    patch_embed = 2 * patches * 3 * patch_h * patch_w * width
    return blocks + projection, patch_embed


def train_step_flops(model, batch: int, mode: str) -> float:
    """Forward + backward FLOPs of a training step; the CLIP is frozen, so backward computes only activation
    gradients (about one forward's worth), and nothing flows back through the patch embedding."""
    blocks, patch_embed = image_flops(model)
    return batch * (2 * blocks + patch_embed) + 2 * text_flops(model, mode)


class _SyntheticImages(torch.utils.data.Dataset):
    """Decoded uint8 images held in memory, transformed on the fly (what a DataLoader over JPEGs hands on)."""

    def __init__(self, count: int, height: int, width: int, classes: int, transform: Callable) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8, generator=generator)
        self.labels = torch.randint(0, classes, (count,), generator=generator)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


def _transforms(size: int, train: bool) -> Callable:
    from torchvision.transforms import InterpolationMode, v2

    bicubic = InterpolationMode.BICUBIC
    if train:
        head = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=bicubic), v2.RandomHorizontalFlip()]
    else:
        head = [v2.Resize(size, interpolation=bicubic), v2.CenterCrop(size)]
    return v2.Compose([*head, v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)])


def _loader(model, batch: int, steps: int, train: bool, workers: int, device: torch.device):
    size = model.image_tower.image_size
    # Non-square and larger than the crop, like decoded photos, so the resize does real work.
    dataset = _SyntheticImages(max(4 * batch, 64), size * 9 // 7, size * 11 // 7, len(model.classnames), None)
    dataset.transform = _transforms(size, train)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch * steps)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=False,
    )


def time_steady_loader(loader: Iterable, consume: Callable[[Iterator], object], device: torch.device) -> float:
    """Seconds that ``consume`` takes over all but the first batch of ``loader`` (it is handed an iterator of
    batches, first of the first alone): starting the workers and filling their queues is a one-off cost per epoch,
    not the pipeline's rate."""
    batches = iter(loader)
    consume(iter([next(batches)]))
    synchronize(device)
    start = time.perf_counter()
    consume(batches)
    synchronize(device)
    return time.perf_counter() - start


def throughput(model, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images/s of the fast path (model-only and end to end) and the achieved TFLOP/s of the model-only runs."""
    autocast = autocast_context(device, args.precision)
    steps = args.throughput_steps
    step = make_train_step(model, "auto", autocast)
    inputs = make_inputs(model, args.batch, device)
    step(inputs)
    train_s = time_call(lambda: [step(inputs) for _ in range(steps)], device)
    eval_inputs = make_inputs(model, args.test_batch, device, seed=1).images
    eval_fast(model, [eval_inputs], autocast)
    eval_s = time_call(lambda: eval_fast(model, [eval_inputs] * steps, autocast), device)

    def train_batches(batches: Iterator) -> None:
        for images, labels in batches:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            step(StepInputs(images, labels, inputs.prototypes))

    def eval_batches(batches: Iterator) -> None:
        eval_fast(model, (images.to(device, non_blocking=True) for images, _ in batches), autocast)

    train_loader = _loader(model, args.batch, steps + 1, True, args.workers, device)
    train_e2e_s = time_steady_loader(train_loader, train_batches, device)
    eval_loader = _loader(model, args.test_batch, steps + 1, False, args.workers, device)
    eval_e2e_s = time_steady_loader(eval_loader, eval_batches, device)
    blocks, patch_embed = image_flops(model)
    train_flops = steps * train_step_flops(model, args.batch, "auto")
    eval_flops = steps * args.test_batch * (blocks + patch_embed) + text_flops(model, "auto")
    return {
        "train_model": steps * args.batch / train_s,
        "train_e2e": steps * args.batch / train_e2e_s,
        "eval_model": steps * args.test_batch / eval_s,
        "eval_e2e": steps * args.test_batch / eval_e2e_s,
        "train_tflops": train_flops / train_s / 1e12,
        "eval_tflops": eval_flops / eval_s / 1e12,
    }
