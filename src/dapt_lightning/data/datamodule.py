"""The LightningDataModule: dataset registry -> few-shot splits -> base/new subsampling -> DataLoaders."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from dapt_lightning.data.fewshot import Subsample, fewshot_splits, subsample_classes
from dapt_lightning.data.image_dataset import ImageListDataset
from dapt_lightning.data.image_files import ImageFilesDataset, expand_images
from dapt_lightning.data.registry import get_dataset
from dapt_lightning.data.samplers import EpochShuffleSampler, ShardSampler
from dapt_lightning.data.transforms import ImagePreprocessing, TransformName, build_transform
from dapt_lightning.data.types import DatasetSplits

DATA_ROOT_ENV = "DAPT_DATA_ROOT"
NO_DATASET = (
    "--data.dataset: no dataset given; name one (--data.dataset oxford_pets; `dapt data check` lists them) or give "
    "a dataset's config (--config configs/oxfordpets.yaml); to classify your own images: dapt predict --data.images"
)
IMAGES_ARE_FOR_PREDICT = (
    "--data.images: your own images are only classified (dapt predict); fit, validate and test need a dataset with "
    "labels (--data.dataset)"
)


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


class FewShotDataModule(L.LightningDataModule):
    """Few-shot CoOp/Dassl data for one dataset.

    With ``images`` instead of a dataset, ``predict`` classifies a user's own files (no labels, no splits).

    Nothing is read when it is built: ``prepare_data`` writes what a dataset can make itself (the synthetic demo
    data), ``setup`` reads the splits and draws the few-shot sets (``classnames`` does too, when asked first).

    Args:
        dataset: registered dataset name (``dapt data check`` lists them), e.g. ``oxford_pets``; required, unless
            ``images`` are given.
        root: folder holding every dataset's folder; default ``$DAPT_DATA_ROOT`` or ``./data``.
        num_shots: training images per class (-1: all). The few-shot val set takes ``min(num_shots, 4)``.
        seed: few-shot sampling seed; None takes ``seed_everything``'s value (the CLI links it), else 1.
        subsample: ``all``, ``base`` or ``new`` classes (base-to-new generalisation).
        batch_size: the global training batch, summed over all processes (the paper's 32); each of W processes
            gets ``batch_size / W`` images, so the effective batch and learning rate do not change with W.
        test_batch_size: evaluation batch per device.
        num_workers: DataLoader worker processes per device; None: one per CPU core this process may use, at most 8.
        image_size: input resolution; None: the model's (224 for ViT-B/16), once the Trainer holds both.
        image_mean, image_std, interpolation, resize_mode: normalisation, resampling and evaluation resize
            (``shortest``, ``longest`` or ``squash``); None: the model's CLIP's own, from its pretrained configuration
            (OpenAI's without a model).
        cache_images: keep the decoded few-shot training images in memory.
        train_crop_scale: area range of the training RandomResizedCrop; (0.08, 1.0) is the official setting.
        dataset_options: extra keyword arguments for the dataset reader (e.g. the ``custom`` dataset's path).
        hold_out_test: keep no test split at all, so that nothing in the run can read a test image (``dapt tune``'s
            trials, which are scored on the few-shot validation split).
        images: image files, folders and globs (``photos/**/*.jpg``) to classify with ``predict``, in place of the
            dataset's test split (``data/image_files.py``); a file that cannot be decoded is reported and skipped.
    """

    def __init__(
        self,
        dataset: str | None = None,
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
        hold_out_test: bool = False,
        images: str | list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if dataset is None and not images:
            raise ValueError(NO_DATASET)
        self.images = images or None
        self._image_paths: list[str] | None = None
        self.record = get_dataset(dataset) if dataset is not None else None
        self.dataset_name = dataset or "images"
        self.root = resolve_data_root(root)
        self.hparams["root"] = str(self.root)  # recorded absolute: the checkpoint says where the data was
        self.num_shots = validate_num_shots(num_shots)
        self.seed = 1 if seed is None else seed
        if subsample not in ("all", "base", "new"):
            raise ValueError(f"--data.subsample must be 'all', 'base' or 'new', got {subsample!r}")
        if batch_size < 1 or test_batch_size < 1:
            raise ValueError(
                f"--data.batch_size and --data.test_batch_size must be >= 1, got {batch_size}, {test_batch_size}"
            )
        if not 0 < train_crop_scale[0] <= train_crop_scale[1] <= 1:
            raise ValueError(f"--data.train_crop_scale must be 0 < low <= high <= 1, got {train_crop_scale}")
        self.batch_size = batch_size
        self.test_batch_size = test_batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.given_preprocessing = {
            "size": image_size,
            "mean": None if image_mean is None else tuple(image_mean),
            "std": None if image_std is None else tuple(image_std),
            "interpolation": interpolation,
            "resize_mode": resize_mode,
        }
        ImagePreprocessing(**self._given())  # a bad value fails here, not at the first batch
        self.cache_images = cache_images
        self.train_crop_scale = tuple(train_crop_scale)
        self.dataset_options = dict(dataset_options or {})
        self._splits: DatasetSplits | None = None
        self._model: Any = None

    def _given(self) -> dict[str, Any]:
        return {key: value for key, value in self.given_preprocessing.items() if value is not None}

    def prepare_data(self) -> None:
        """Write what the dataset makes itself (the synthetic demo data); once per node, before any split is read."""
        if self.record is not None and self.record.prepare is not None:
            self.record.prepare(self.root, **self.dataset_options)

    def setup(self, stage: str | None = None) -> None:
        """Read the dataset's splits and draw the few-shot sets (once)."""
        if self._splits is not None:
            return
        if self.record is None:
            if stage not in (None, "predict"):
                raise ValueError(IMAGES_ARE_FOR_PREDICT)
            return
        full = self.record.reader(self.root, **self.dataset_options)
        splits = subsample_classes(fewshot_splits(full, self.num_shots, self.seed), self.hparams.subsample)
        self._check_every_class_has_training_images(splits)
        if self.hparams.hold_out_test:
            splits = dataclasses.replace(splits, test=[])
        self._splits = splits

    @property
    def splits(self) -> DatasetSplits:
        """The few-shot splits (read on first use when ``setup`` has not run: outside a Trainer)."""
        if self.record is None:
            raise ValueError(IMAGES_ARE_FOR_PREDICT)
        if self._splits is None:
            self.prepare_data()
            self.setup()
        return self._splits

    def _check_every_class_has_training_images(self, splits: DatasetSplits) -> None:
        if not splits.train:
            return  # test-only datasets (ImageNet-V2/Sketch/A/R) are only evaluated
        present = {item.label for item in splits.train}
        missing = [name for label, name in enumerate(splits.classnames) if label not in present]
        if missing:
            raise ValueError(
                f"dataset {self.dataset_name!r} under {self.root}: {len(missing)} class(es) have no training images "
                f"(e.g. {missing[:3]}); the split file is incomplete. Fix the split or remove those classes."
            )

    def follow(self, model: Any) -> None:
        """Outside a Trainer, take ``model``'s CLIP preprocessing for every setting not given (under a Trainer the
        DataModule follows the Trainer's model by itself)."""
        self._model = model

    @property
    def preprocessing(self) -> ImagePreprocessing:
        """The settings given, the rest the model's CLIP's own (the ``image_preprocessing`` of the Trainer's
        module, or of the model given to :meth:`follow`); OpenAI's without a model."""
        module = self.trainer.lightning_module if self.trainer is not None else self._model
        model = getattr(module, "image_preprocessing", None) or {}
        return ImagePreprocessing(**{**model, **self._given()})

    @property
    def image_size(self) -> int:
        return self.preprocessing.size

    @property
    def classnames(self) -> list[str]:
        """Class names indexed by label (the model takes them from here); none for a user's own images."""
        return list(self.splits.classnames) if self.record is not None else []

    @property
    def template(self) -> str | None:
        """The dataset's hand-crafted zero-shot prompt (CoOp's; ``{}`` is the class name); None for own images."""
        return self.record.template if self.record is not None else None

    @property
    def predict_paths(self) -> list[str]:
        """The files ``predict`` classifies, by index: the ``images`` given, else the test split's."""
        if self.images is not None:
            if self._image_paths is None:
                self._image_paths = expand_images(self.images)
            return self._image_paths
        return [item.impath for item in self.splits.test]

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
        if self.images is None:
            return self.test_dataloader()
        rank, world = self._rank_and_world()
        preprocessing = self.preprocessing
        paths = self.predict_paths
        dataset = ImageFilesDataset(paths, build_transform("test", preprocessing), preprocessing.size)
        return self._loader(dataset, ShardSampler(len(dataset), rank, world), self.test_batch_size)
