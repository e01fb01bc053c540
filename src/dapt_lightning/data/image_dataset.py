"""A torch Dataset over ``Datum`` lists that decodes images as RGB, optionally keeping them decoded in memory."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from dapt_lightning.data.types import Datum


class ImageLoadError(RuntimeError):
    """An image listed by a split could not be read: one line naming the dataset, the file and what to do.

    DataLoader workers send an error to the main process as its type and formatted traceback, and PyTorch rebuilds
    it from that text alone (``ImageLoadError(traceback)``); the constructor takes the one-line message back out of
    the traceback, so the error a user sees from a worker is the same line as without workers.

    Attributes:
        path: the image file (None when it could not be recovered from a worker's traceback).
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        message = _message_from_worker_traceback(message)
        super().__init__(message)
        self.path = path if path is not None else _path_in(message)

    def __reduce__(self) -> tuple[type[ImageLoadError], tuple[str, str | None]]:
        return type(self), (str(self), self.path)


# The two message shapes of `load_rgb`; the path sits between the prefix and either ending.
_MISSING, _UNDECODABLE = "is listed in the split but does not exist", "cannot be decoded"


def _message_from_worker_traceback(text: str) -> str:
    # "Caught ImageLoadError in DataLoader worker process 0.\nOriginal Traceback ...\n<module>.ImageLoadError: <msg>"
    if "\n" not in text:
        return text
    for line in reversed(text.splitlines()):
        head, sep, message = line.partition("ImageLoadError: ")
        if sep and (not head or head.endswith(".")):
            return message
    return text


def _path_in(message: str) -> str | None:
    _, sep, rest = message.partition(": image ")
    for ending in (f" {_MISSING}", f" {_UNDECODABLE}"):
        if sep and ending in rest:
            return rest.split(ending, 1)[0]  # the first: the decoder's reason comes after the path
    return None


def unwrap_worker_error(error: BaseException) -> ImageLoadError | None:
    """The :class:`ImageLoadError` behind ``error``, or None.

    ``error`` may be the ImageLoadError itself, one PyTorch rebuilt from a worker, a ``RuntimeError`` holding a
    worker's traceback (what PyTorch raises when it cannot rebuild an error type), or any error caused by one.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ImageLoadError):
            return current
        text = str(current)
        if "Caught ImageLoadError" in text:
            message = _message_from_worker_traceback(text)
            if message != text:
                return ImageLoadError(message)
        current = current.__cause__ or current.__context__
    return None


def load_rgb(path: str, dataset: str) -> Image.Image:
    """Decode ``path`` as RGB (greyscale, palette and CMYK files occur); a clear error names file and dataset."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise ImageLoadError(
            f"dataset {dataset!r}: image {path} {_MISSING}. Check the data root, or run "
            "`dapt data check --root <root>`.",
            path,
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        reason = " ".join(str(error).split())  # one line, whatever the decoder said
        raise ImageLoadError(
            f"dataset {dataset!r}: image {path} {_UNDECODABLE} ({type(error).__name__}: {reason}); the file is "
            "corrupt or truncated: re-download or replace it (`dapt data check --full` lists every such file).",
            path,
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
