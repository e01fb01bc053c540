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
from dapt_lightning.data.samplers import EpochShuffleSampler, ShardSampler
from dapt_lightning.data.transforms import ImagePreprocessing, TransformName, build_transform
from dapt_lightning.data.types import DatasetSplits

DATA_ROOT_ENV = "DAPT_DATA_ROOT"
"""The input size of the paper's ViT-B/16, for DataModules built without the CLI (which links the CLIP's size)."""


def resolve_data_root(root: str | None) -> Path:
    """``root``, else ``$DAPT_DATA_ROOT``, else ``./data``; expanded to an absolute path."""
    chosen = root or os.environ.get(DATA_ROOT_ENV) or "data"
    return Path(os.path.expandvars(chosen)).expanduser().resolve()


def default_num_workers() -> int:
    """One DataLoader worker per CPU core this process may use, at most 8 (more rarely help decoding JPEGs)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores)


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
        batch_size: the global training batch, summed over all processes (the paper's 32); each of W processes
            gets ``batch_size / W`` images, so the effective batch and learning rate do not change with W.
        test_batch_size: evaluation batch per device.
        num_workers: DataLoader worker processes per device; None: one per CPU core this process may use, at most 8.
        image_size: input resolution; the `dapt` CLI sets the CLIP's own (224 for ViT-B/16) when not given.
        image_mean, image_std, interpolation, resize_mode: the CLIP's normalisation, resampling and evaluation
            resize (``shortest``, ``longest`` or ``squash``); the `dapt` CLI sets the CLIP's own, from its pretrained
            configuration, when not given; otherwise OpenAI's.
        cache_images: keep the decoded few-shot training images in memory.
        train_crop_scale: area range of the training RandomResizedCrop; (0.08, 1.0) is the official setting.
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
        num_workers: int | None = None,
        image_size: int | None = None,
        image_mean: tuple[float, float, float] | None = None,
        image_std: tuple[float, float, float] | None = None,
        interpolation: str | None = None,
        resize_mode: str | None = None,
        cache_images: bool = False,
        train_crop_scale: tuple[float, float] = (0.08, 1.0),
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
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        given = {
            "size": image_size,
            "mean": None if image_mean is None else tuple(image_mean),
            "std": None if image_std is None else tuple(image_std),
            "interpolation": interpolation,
            "resize_mode": resize_mode,
        }
        self.preprocessing = ImagePreprocessing(**{key: value for key, value in given.items() if value is not None})
        self.cache_images = cache_images
        if not 0 < train_crop_scale[0] <= train_crop_scale[1] <= 1:
            raise ValueError(f"--data.train_crop_scale must be 0 < low <= high <= 1, got {train_crop_scale}")
        self.train_crop_scale = tuple(train_crop_scale)
        if batch_size < 1 or test_batch_size < 1:
            raise ValueError(
                f"--data.batch_size and --data.test_batch_size must be >= 1, got {batch_size}, {test_batch_size}"
            )
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
    def image_size(self) -> int:
        return self.preprocessing.size

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
            build_transform(transform, self.preprocessing, self.train_crop_scale),
            self.dataset_name,
            cache_decoded=self.cache_images and split == "train",
            augment_seed=self.seed if split == "train" else None,
        )

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        if trainer.world_size > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise ValueError(
                "--trainer.use_distributed_sampler must be false with dapt_lightning (the `dapt` CLI sets it): the "
                "DataModule shards data itself, so that evaluation counts every sample once and DDP sees the same "
                "global batches as one process"
            )
        return trainer.global_rank, trainer.world_size

    def _loader(
        self, dataset: ImageListDataset, sampler: EpochShuffleSampler | ShardSampler, batch_size: int
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            # Pinned memory only speeds up copies to a GPU; elsewhere it is refused with a warning.
            pin_memory=self.trainer is not None and self.trainer.strategy.root_device.type == "cuda",
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        dataset = self.dataset("train")
        # As Dassl: drop the last incomplete batch only when there is at least one full batch.
        drop_last = len(dataset) >= self.batch_size
        sampler = EpochShuffleSampler(len(dataset), self.seed, self.batch_size, drop_last, rank, world)
        return self._loader(dataset, sampler, sampler.local_batch_size)

    def _eval_loader(self, split: str) -> DataLoader:
        rank, world = self._rank_and_world()
        dataset = self.dataset(split)
        return self._loader(dataset, ShardSampler(len(dataset), rank, world), self.test_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
