"""Frozen CLIP image features of a DataModule's split, cached on disk: what the linear probe and Tip-Adapter read.

The features are the image tower's raw output (``clip.visual``, not normalised: the official linear probe fits on
that; Tip-Adapter normalises it). One cache file per split and view, under a key of everything the features depend
on (the CLIP's identity, the images and their labels, the transform, the view's seed, the preprocessing, the tower's
code path and device), written atomically.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from dapt_lightning.callbacks.features import encode_images
from dapt_lightning.data.image_dataset import seeded_views
from dapt_lightning.storage import default_cache_dir, load_tensors, save_tensors, stable_hash


def feature_cache_dir() -> Path:
    """``$DAPT_CACHE_DIR/features`` (default ``~/.cache/dapt_lightning/features``)."""
    return default_cache_dir() / "features"


def frozen_features(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    split: str,
    view: int | None = None,
    batch_size: int = 100,
    use_cache: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw frozen image features ``[N, D]`` (float32, on the module's device) and labels ``[N]`` of a split.

    Args:
        module: a built method (its frozen CLIP encodes; visual prompts are not used).
        datamodule: the DataModule whose ``train``/``val``/``test`` split is encoded.
        split: which split.
        view: None: the test transform (one deterministic view); an int: augmented view number ``view`` of the
            training transform, each image's augmentation seeded by ``(datamodule seed, view)`` and its index.
        batch_size: images per encoding batch.
        use_cache: read and write the cache (the same features are computed either way).
    """
    transform = "test" if view is None else "train"
    seed = None if view is None else _view_seed(datamodule.seed, view)
    key = stable_hash(
        {
            "image_path": module.model.image_tower.computation,
            "device": module.device.type,
            "dataset": datamodule.dataset_name,
            "split": split,
            "items": [(item.impath, item.label) for item in getattr(datamodule.splits, split)],
            "clip": module.clip_identity.to_dict(),
            "transform": transform,
            "view_seed": seed,
            "crop_scale": list(datamodule.train_crop_scale) if view is not None else None,
            "preprocessing": asdict(datamodule.preprocessing),
        }
    )
    name = split if view is None else f"{split}-view{view}"
    path = feature_cache_dir() / f"{datamodule.dataset_name}-{name}-{key[:24]}.safetensors"
    if use_cache:
        cached, _ = load_tensors(path, key)
        if cached is not None:
            return cached["features"].to(module.device), cached["labels"].to(module.device)
    dataset = datamodule.dataset(split, transform=transform)
    if seed is not None:
        dataset = seeded_views(dataset, seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=datamodule.num_workers)
    was_training = module.training
    module.eval()
    progress = f"Features: {name}"
    features, labels = encode_images(module.model, loader, module.device, progress=progress, normalised=False)
    module.train(was_training)
    trainer = module._trainer
    if use_cache and (trainer is None or trainer.is_global_zero):
        save_tensors(path, {"features": features, "labels": labels}, key)
        rank_zero_info(f"Features of {datamodule.dataset_name} {name} cached at {path}")
    return features, labels


def _view_seed(seed: int, view: int) -> int:
    # Distinct per (few-shot seed, view), and not the prototypes' seed (which is the few-shot seed itself).
    return seed * 1000 + 1 + view
