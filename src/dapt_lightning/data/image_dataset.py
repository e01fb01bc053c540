"""A torch Dataset over ``Datum`` lists that decodes images as RGB, optionally keeping them decoded in memory."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from dapt_lightning.data.types import Datum


class ImageLoadError(RuntimeError):
    """An image listed by a split could not be read."""


def load_rgb(path: str, dataset: str) -> Image.Image:
    """Decode ``path`` as RGB (greyscale, palette and CMYK files occur); a clear error names file and dataset."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise ImageLoadError(
            f"dataset {dataset!r}: image {path} is listed in the split but does not exist. "
            f"Check the data root, or run `dapt data check --root <root>`."
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(
            f"dataset {dataset!r}: image {path} cannot be decoded ({type(error).__name__}: {error}); "
            "the file is corrupt or truncated: re-download or replace it."
        ) from error


class ImageListDataset(Dataset):
    """``(image tensor, label, index)`` for each ``Datum``.

    Args:
        items: the images.
        transform: PIL image -> tensor.
        dataset_name: named in error messages.
        cache_decoded: keep decoded images in memory after first use (for small few-shot training sets, so
            epochs after the first do not decode files again; each worker process holds its own copy).
        augment_seed: when set, item ``i`` requested as ``epoch * len + i`` (see ``EpochShuffleSampler``) is
            transformed under a torch seed of ``(augment_seed, epoch, i)``: augmentations then do not depend on
            worker processes, process count or what ran before, which makes resumed runs exact.
    """

    def __init__(
        self,
        items: list[Datum],
        transform: Callable[[Image.Image], torch.Tensor],
        dataset_name: str,
        cache_decoded: bool = False,
        augment_seed: int | None = None,
    ) -> None:
        self.items = items
        self.augment_seed = augment_seed
        self.transform = transform
        self.dataset_name = dataset_name
        self.cache_decoded = cache_decoded
        self._decoded: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> Image.Image:
        """The decoded RGB image of item ``index``."""
        if index in self._decoded:
            return self._decoded[index]
        image = load_rgb(self.items[index].impath, self.dataset_name)
        if self.cache_decoded:
            self._decoded[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        epoch, index = divmod(index, len(self.items))
        if self.augment_seed is None:
            return self.transform(self.image(index)), self.items[index].label, index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.augment_seed * 1_000_003 + epoch) * 10_000_019 + index)
            return self.transform(self.image(index)), self.items[index].label, index


def seeded_views(dataset: ImageListDataset, seed: int) -> ImageListDataset:
    """A copy of ``dataset`` whose item ``i`` is always the same augmented view, seeded by ``(seed, i)`` alone.

    Used for prototypes: every process count and worker count then gives the same view of an image.
    """
    views = copy.copy(dataset)  # shares the items and the decoded-image cache
    views.augment_seed = seed
    return views
