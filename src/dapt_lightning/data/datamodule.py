"""The LightningDataModule: dataset registry -> few-shot splits -> base/new subsampling -> DataLoaders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from dapt_lightning.data.fewshot import Subsample, fewshot_splits, subsample_classes
from dapt_lightning.data.image_dataset import ImageListDataset
from dapt_lightning.data.registry import get_dataset_reader
from dapt_lightning.data.transforms import TransformName, build_transform
from dapt_lightning.data.types import DatasetSplits

DATA_ROOT_ENV = "DAPT_DATA_ROOT"


def resolve_data_root(root: str | None) -> Path:
    """``root``, else ``$DAPT_DATA_ROOT``, else ``./data``; expanded to an absolute path."""
    chosen = root or os.environ.get(DATA_ROOT_ENV) or "data"
    return Path(os.path.expandvars(chosen)).expanduser().resolve()


def validate_num_shots(num_shots: Any) -> int:
    """``num_shots`` must be an integer >= 1, or -1 for every training image (as the official code)."""
    if isinstance(num_shots, bool) or not isinstance(num_shots, int):
        raise ValueError(f"--data.num_shots must be an integer (>= 1, or -1 for all images), got {num_shots!r}")
    if num_shots == 0 or num_shots < -1:
        raise ValueError(f"--data.num_shots must be >= 1, or -1 for every training image, got {num_shots}")
    return num_shots


class DAPTDataModule(L.LightningDataModule):
    """Few-shot CoOp/Dassl data for one dataset.

    Args:
        dataset: registered dataset name (``dapt data check`` lists them), e.g. ``oxford_pets``.
        root: folder holding every dataset's folder; default ``$DAPT_DATA_ROOT`` or ``./data``.
        num_shots: training images per class (-1: all). The few-shot val set takes ``min(num_shots, 4)``.
        seed: few-shot sampling seed; None takes ``seed_everything``'s value (the CLI links it).
        subsample: ``all``, ``base`` or ``new`` classes (base-to-new generalisation).
        batch_size: training batch per device (the paper: 32 in total).
        test_batch_size: evaluation batch per device.
        num_workers: DataLoader worker processes per device.
        image_size: input resolution; None takes the CLIP's own (set by the LightningModule in ``setup``).
        cache_images: keep the decoded few-shot training images in memory.
        dataset_options: extra keyword arguments for the dataset reader (e.g. the ``custom`` dataset's path).
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        num_shots: int = 16,
        seed: int | None = None,
        subsample: Subsample = "all",
        batch_size: int = 32,
        test_batch_size: int = 100,
        num_workers: int = 4,
        image_size: int | None = None,
        cache_images: bool = False,
        dataset_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.dataset_name = dataset
        self.root = resolve_data_root(root)
        self.num_shots = validate_num_shots(num_shots)
        self.seed = 1 if seed is None else seed
        self.batch_size = batch_size
        self.test_batch_size = test_batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.cache_images = cache_images
        if batch_size < 1 or test_batch_size < 1:
            raise ValueError(f"--data.batch_size and --data.test_batch_size must be >= 1, got {batch_size}, {test_batch_size}")
        reader = get_dataset_reader(dataset)
        full = reader(self.root, **(dataset_options or {}))
        self.splits: DatasetSplits = subsample_classes(fewshot_splits(full, self.num_shots, self.seed), subsample)
        self._check_every_class_has_training_images()

    def _check_every_class_has_training_images(self) -> None:
        if not self.splits.train:
            return  # test-only datasets (ImageNet-V2/Sketch/A/R) are only evaluated
        present = {item.label for item in self.splits.train}
        missing = [name for label, name in enumerate(self.splits.classnames) if label not in present]
        if missing:
            raise ValueError(
                f"dataset {self.dataset_name!r} under {self.root}: {len(missing)} class(es) have no training images "
                f"(e.g. {missing[:3]}); the split file is incomplete. Fix the split or remove those classes."
            )

    @property
    def classnames(self) -> list[str]:
        """Class names indexed by label (linked to the model's ``classnames`` by the CLI)."""
        return list(self.splits.classnames)

    def dataset(self, split: str, transform: TransformName | None = None) -> ImageListDataset:
        """The ``train``/``val``/``test`` images with the ``train`` or ``test`` transform (default by split)."""
        items = getattr(self.splits, split)
        if not items:
            raise ValueError(f"dataset {self.dataset_name!r} has no {split!r} images (a test-only dataset?)")
        transform = transform or ("train" if split == "train" else "test")
        return ImageListDataset(
            items,
            build_transform(transform, self.image_size or 224),
            self.dataset_name,
            cache_decoded=self.cache_images and split == "train",
        )

    def _loader(self, split: str, batch_size: int, shuffle: bool, drop_last: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=True,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        # As Dassl: drop the last incomplete batch only when there is at least one full batch.
        drop_last = len(self.splits.train) >= self.batch_size
        return self._loader("train", self.batch_size, shuffle=True, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.test_batch_size, shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.test_batch_size, shuffle=False, drop_last=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
