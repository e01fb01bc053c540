"""A user's own images (``dapt predict --data.images``): files, folders and globs expanded to a list of files, and a
Dataset that marks a file it cannot decode instead of stopping the run, so the rest are still classified."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
"""What a folder is searched for (files named explicitly, or matched by a glob, are tried whatever their suffix)."""
UNREADABLE = -2
"""The label an :class:`ImageFilesDataset` item carries when its file could not be decoded (unknown labels: -1)."""
NO_LABEL = -1


def expand_images(entries: str | Sequence[str]) -> list[str]:
    """The files that ``entries`` name, each once, in the order given (a folder's and a glob's sorted).

    A folder gives the image files under it (recursively, by suffix: :data:`IMAGE_SUFFIXES`); a glob (``**`` for any
    depth) gives every file it matches; a file is taken as it is, so that one that is not an image is reported
    rather than ignored. A path that does not exist stays in the list (it is reported as skipped).

    Raises:
        ValueError: nothing at all was named, or nothing named exists.
    """
    entries = [entries] if isinstance(entries, str) else list(entries)
    entries = [str(Path(os.path.expandvars(entry)).expanduser()) for entry in entries if str(entry).strip()]
    if not entries:
        raise ValueError("--data.images: no images named; give files, folders or globs ('photos/**/*.jpg')")
    files: list[str] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files += sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif glob.has_magic(entry):
            files += sorted(p for p in glob.glob(entry, recursive=True) if Path(p).is_file())
        else:
            files.append(entry)
    unique = list(dict.fromkeys(str(Path(p).resolve()) for p in files))
    if not any(Path(p).is_file() for p in unique):
        raise ValueError(
            f"--data.images: no image file found in {', '.join(entries)} (a folder is searched for "
            f"{', '.join(IMAGE_SUFFIXES)} files; quote a glob so that dapt expands it: 'photos/**/*.jpg')"
        )
    return unique


def image_problem(path: str) -> str | None:
    """Why ``path`` cannot be classified (one line), or None when it decodes as an image."""
    try:
        with Image.open(path) as image:
            image.convert("RGB")
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "a folder, not an image file"
    except PermissionError:
        return "not readable (permission denied)"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return f"not a decodable image ({type(error).__name__}: {' '.join(str(error).split())})"
    return None


class ImageFilesDataset(Dataset):
    """``(image tensor, label, index)`` for each file; a file that cannot be decoded gives a zero image and the label
    :data:`UNREADABLE` (the reason is found again by :func:`image_problem` where it is reported).

    Args:
        paths: image files.
        transform: PIL image -> tensor (the model's evaluation preprocessing).
        image_size: the tensor size of a zero image standing in for an unreadable file.
    """

    def __init__(self, paths: Sequence[str], transform: Callable[[Image.Image], torch.Tensor], image_size: int) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        try:
            with Image.open(self.paths[index]) as image:
                return self.transform(image.convert("RGB")), NO_LABEL, index
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            return torch.zeros(3, self.image_size, self.image_size), UNREADABLE, index
