"""Reading what the official readers read: directory listings in their order, ``classnames.txt`` files, JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dapt_lightning.data.datasets.checks import DatasetError


def listdir_nohidden(path: Path, sort: bool = False) -> list[str]:
    """Non-hidden entries of ``path``, in ``os.listdir`` order unless ``sort``, exactly as Dassl's helper.

    The unsorted order is the file system's and can differ between machines; the official readers use it for the
    image files inside class folders, and so do we, to pick the same few-shot images on the same disk.
    """
    items = [name for name in os.listdir(path) if not name.startswith(".")]
    if sort:
        items.sort()
    return items


def read_classnames_txt(path: Path) -> dict[str, str]:
    """Read an ImageNet-style ``classnames.txt`` (``<folder> <class name with spaces>`` per line), in file order."""
    mapping: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            parts = line.strip().split(" ")
            # Mirrors the official parser: a blank line maps "" -> "" rather than being skipped.
            mapping[parts[0]] = " ".join(parts[1:])
    return mapping


def load_json(path: Path, what: str) -> object:
    """Parse a JSON file; invalid JSON raises a DatasetError naming ``what`` and the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{what} {path} is not valid JSON ({err}); delete it or download it again") from err
