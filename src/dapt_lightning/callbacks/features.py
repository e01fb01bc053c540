"""The one no-grad image path: prototypes, embedding plots and the notebook encode images through it."""

from __future__ import annotations

import random

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm


def encode_images(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    use_prompts: bool = False,
    progress: str | None = None,
    normalised: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image features ``[N, D]`` (float32, on ``device``) and labels ``[N]`` of every image of ``loader``.

    Runs under ``torch.inference_mode`` (the frozen tower keeps no autograd state). ``use_prompts`` False gives
    zero-shot CLIP features; ``progress`` names a progress bar (None: no bar); ``normalised`` False gives the image
    tower's raw output (no prompts).
    """
    features, labels = [], []
    for images, batch_labels, _ in tqdm(loader, desc=progress, disable=progress is None, leave=False):
        with torch.inference_mode():
            pixels = images.to(device)
            encoded = model.encode_image(pixels, use_prompts) if normalised else model.image_tower(pixels, None)
            features.append(encoded.float())
        labels.append(batch_labels.to(device))
    if not features:  # e.g. a rank with no share of a tiny training set
        return torch.zeros(0, 0, device=device), torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(features), torch.cat(labels)


def subset(dataset: Dataset, max_items: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of at most ``max_items`` items (all of them when None), in index order."""
    if max_items is None or len(dataset) <= max_items:
        return dataset
    indices = sorted(random.Random(seed).sample(range(len(dataset)), max_items))
    return Subset(dataset, indices)


@torch.no_grad()
def image_features(
    module: torch.nn.Module, dataset: Dataset, zero_shot: bool = False, batch_size: int = 100, num_workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image features ``[N, D]`` and labels ``[N]``; ``zero_shot`` skips the visual prompts."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = module.training
    module.eval()
    features, labels = encode_images(module.model, loader, module.device, use_prompts=not zero_shot)
    module.train(was_training)
    return features.cpu(), labels.cpu()
