"""split_zhou JSON files: reading one, writing one atomically, and saying where a generated split was saved."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from dapt_lightning.data.datasets.checks import DatasetError
from dapt_lightning.data.datasets.files import load_json
from dapt_lightning.data.types import Datum
from dapt_lightning.storage import atomic_write_bytes

SplitTriple = tuple[list[Datum], list[Datum], list[Datum]]
"""train, val and test."""


def read_split(path: Path, image_dir: Path) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Read a split_zhou JSON: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``.

    Image paths are joined to ``image_dir`` as strings (``os.path.join``), as the official ``read_split``.

    Raises:
        DatasetError: the file is not valid JSON or not in the split_zhou format; the message names the file.
    """
    split = load_json(path, "split file")
    if not isinstance(split, dict):
        raise DatasetError(f"split file {path}: expected a JSON object with train/val/test, got {type(split).__name__}")
    out = []
    for key in ("train", "val", "test"):
        if key not in split:
            raise DatasetError(f"split file {path} has no {key!r} list; expected keys train, val, test")
        items = []
        for index, entry in enumerate(split[key]):
            if not (isinstance(entry, list | tuple) and len(entry) == 3):
                raise DatasetError(
                    f"split file {path}: {key}[{index}] must be [relpath, label, classname], got {entry!r}"
                )
            relpath, label, classname = entry
            try:
                label = int(label)
            except (TypeError, ValueError) as err:
                raise DatasetError(f"split file {path}: {key}[{index}] has a non-integer label {label!r}") from err
            items.append(Datum(os.path.join(str(image_dir), str(relpath)), label, str(classname)))
        out.append(items)
    return out[0], out[1], out[2]


def split_to_json(items: Iterable[Datum], image_dir: Path) -> list[list[object]]:
    """Items as split_zhou rows, with ``image_dir`` stripped from the front of each path (as ``save_split``)."""
    prefix = str(image_dir)
    rows: list[list[object]] = []
    for item in items:
        impath = item.impath.replace(prefix, "")
        if impath.startswith("/"):
            impath = impath[1:]
        rows.append([impath, item.label, item.classname])
    return rows


def write_json_atomic(obj: object, path: Path) -> None:
    """Write JSON to ``path`` so that readers never see a half-written file (temp file, fsync, rename)."""
    atomic_write_bytes(path, json.dumps(obj, indent=4, separators=(",", ": ")).encode("utf-8"))


def save_split(train: list[Datum], val: list[Datum], test: list[Datum], path: Path, image_dir: Path) -> None:
    """Write a split_zhou JSON (atomically); ``OSError`` when the folder is not writable."""
    split = {key: split_to_json(items, image_dir) for key, items in (("train", train), ("val", val), ("test", test))}
    write_json_atomic(split, path)


def save_generated_split(
    split: SplitTriple, path: Path, image_dir: Path, message: str, save: bool = True, note: str = ""
) -> None:
    """Save a split made because its file was absent, and say so in one line.

    Args:
        split: train, val and test.
        path: the split file to write; image_dir: the folder its paths are relative to.
        message: what was generated and how; the line goes on with where it was saved (or why not) and ``note``.
        save: write the file (a custom dataset's ``save_split`` option).
        note: what the user should know about it.

    A folder that cannot be written is no error: the split is used in memory and generated again (identically) on
    the next run.
    """
    ending = "; not saved (save_split is false): every run generates it again, identically"
    if save:
        try:
            save_split(*split, path, image_dir)
            ending = f" and saved to {path}"
        except OSError as err:
            ending = f"; could not save it to {path} ({err}): every run generates it again, identically"
    # Lightning's console logger: the line shows once, on the first process, and goes into the run's log.
    rank_zero_info(message + ending + (f"; {note}" if note else ""))
