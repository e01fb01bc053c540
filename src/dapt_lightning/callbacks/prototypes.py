"""Class prototypes for DAPT's intra-dispersion loss, computed in-process before fitting and cached on disk."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Subset

from dapt_lightning.callbacks.features import encode_images
from dapt_lightning.data.image_dataset import seeded_views
from dapt_lightning.storage import default_cache_dir, load_tensors, save_tensors, stable_hash

log = logging.getLogger(__name__)


def class_sums(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums ``[C, D]`` and counts ``[C]`` in float64 (summed across processes afterwards)."""
    sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=labels.device)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    if labels.numel():
        sums.index_add_(0, labels, features.double().reshape(-1, dim))
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    return sums, counts


class PrototypeCallback(L.Callback):
    """Before fitting, set the module's prototypes to the per-class mean of normalised zero-shot image features.

    One augmented view per training image (the training transform, seeded per image, as the official code
    encodes one random view), or the test transform. Under DDP each rank encodes a disjoint share of the
    images and the per-class sums are all-reduced, so every rank holds the same prototypes, equal to the
    1-process result, built from every training image exactly once. Results are cached on disk under a key
    of everything they depend on.

    Args:
        transform: ``train`` (one seeded augmented view, as the official code) or ``test``.
        seed: augmentation seed; None uses the few-shot seed of the DataModule.
        cache_dir: cache folder; default ``$DAPT_CACHE_DIR/prototypes`` or ``~/.cache/dapt_lightning/prototypes``.
        use_cache: read and write the cache.
        batch_size: images per encoding batch.
    """

    def __init__(
        self,
        transform: Literal["train", "test"] = "train",
        seed: int | None = None,
        cache_dir: str | None = None,
        use_cache: bool = True,
        batch_size: int = 100,
    ) -> None:
        self.transform = transform
        self.seed = seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir() / "prototypes"
        self.use_cache = use_cache
        self.batch_size = batch_size
        self.last_source: str = ""  # "cache" or "computed", for tests and logs

    def cache_key(self, module: L.LightningModule, datamodule: L.LightningDataModule, seed: int) -> str:
        """Hash of what the prototypes depend on: split content, shots, seeds, CLIP identity, transform, image size
        and how the image features are computed (the tower's code path and the device)."""
        return stable_hash(
            {
                # How the features are computed decides their last bits, enough to change a short run's trajectory.
                "image_path": module.model.image_tower.computation,
                "device": module.device.type,
                "dataset": datamodule.dataset_name,
                "train": [(item.impath, item.label) for item in datamodule.splits.train],
                "num_shots": datamodule.num_shots,
                "fewshot_seed": datamodule.seed,
                "augmentation_seed": seed,
                "clip": module.clip_identity.to_dict(),
                "transform": self.transform,
                "preprocessing": asdict(datamodule.preprocessing),
            }
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not getattr(pl_module, "needs_prototypes", False):
            return
        if pl_module.has_prototypes:
            rank_zero_info("Prototypes: kept from the checkpoint")
            return
        pl_module.set_prototypes(self.compute(trainer, pl_module))

    def compute(self, trainer: L.Trainer, module: L.LightningModule) -> torch.Tensor:
        """The prototypes ``[C, D]`` (from the cache when its key matches)."""
        datamodule = trainer.datamodule
        seed = datamodule.seed if self.seed is None else self.seed
        key = self.cache_key(module, datamodule, seed)
        path = self.cache_dir / f"{datamodule.dataset_name}-{key[:24]}.safetensors"
        if self.use_cache:
            cached, reason = load_tensors(path, key)
            if cached is not None:
                self.last_source = "cache"
                rank_zero_info(f"Prototypes: loaded from cache {path}")
                return cached["prototypes"]
            if reason != "no cache file":
                rank_zero_info(f"Prototypes: {reason}; recomputing")
        prototypes = self._encode(trainer, module, datamodule, seed)
        self.last_source = "computed"
        if self.use_cache and trainer.is_global_zero:
            save_tensors(path, {"prototypes": prototypes}, key)
            rank_zero_info(f"Prototypes: cached at {path}")
        trainer.strategy.barrier("prototypes")
        return prototypes

    def _encode(
        self, trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, seed: int
    ) -> torch.Tensor:
        dataset = seeded_views(datamodule.dataset("train", transform=self.transform), seed)
        # Rank r takes images r, r + W, r + 2W, ...: every image exactly once, no padding duplicates.
        shard = Subset(dataset, list(range(trainer.global_rank, len(dataset), trainer.world_size)))
        loader = DataLoader(shard, batch_size=self.batch_size, shuffle=False, num_workers=datamodule.num_workers)
        was_training = module.training
        module.eval()
        progress = "Prototypes" if trainer.is_global_zero else None
        features, labels = encode_images(module.model, loader, module.device, use_prompts=False, progress=progress)
        module.train(was_training)
        num_classes, dim = module.prototypes.shape
        sums, counts = class_sums(features, labels, num_classes, dim)
        if trainer.world_size > 1:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"Prototypes: classes {empty[:5]} have no training images; check the dataset split")
        # The mean of unit vectors, deliberately not re-normalised (as the official code).
        return (sums / counts[:, None]).float()
