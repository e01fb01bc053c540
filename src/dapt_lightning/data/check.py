"""``dapt data check``: which datasets are ready under a data root, and exactly what is missing from the others."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from dapt_lightning.data.image_dataset import ImageLoadError, load_rgb
from dapt_lightning.data.registry import download_plans, get_dataset_reader, layouts
from dapt_lightning.data.types import DatasetSplits, Datum

Status = Literal["found", "missing", "incomplete"]


@dataclass(frozen=True)
class MissingItem:
    """One missing file or folder: its exact path and how to get it."""

    path: Path
    kind: str
    hint: str


@dataclass
class DatasetStatus:
    """The state of one dataset under the data root.

    Attributes:
        name: Registered dataset name.
        folder: The dataset's folder under the data root.
        status: ``found`` (ready), ``missing`` (no folder) or ``incomplete`` (folder present, something wrong).
        missing: Every missing required file or folder.
        problems: Other errors (malformed split file, images listed but absent, ...).
        notes: Harmless remarks (e.g. a split that will be generated because the official split file is absent).
        how_to_get: ``dapt data download NAME`` and/or the manual steps.
        num_images: Images listed by the reader (train + val + test), when it could run.
    """

    name: str
    folder: Path
    status: Status
    missing: list[MissingItem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    how_to_get: str = ""
    num_images: int | None = None


def how_to_get(name: str, root: Path) -> str:
    """What to run (and do by hand) to get dataset ``name``."""
    plan = download_plans().get(name)
    if plan is None:
        return "see the Datasets section of the README"
    automatic = f"`dapt data download {name} --root {root}`" if plan.resources else ""
    if plan.manual and automatic:
        return f"{automatic} (split/class files), then by hand: {plan.manual}"
    return automatic or plan.manual


def _absent_images(items: list[Datum], full: bool) -> list[str]:
    # Without --full, only the first image of each class (and the last of the list) is checked: enough to catch a
    # wrong folder, a missing class or an unfinished extraction without touching every file of ImageNet.
    if full:
        sample = [item.impath for item in items]
    else:
        first_per_class = {item.label: item.impath for item in reversed(items)}
        sample = list(first_per_class.values()) + [item.impath for item in items[-1:]]
    return [path for path in dict.fromkeys(sample) if not os.path.isfile(path)]


def _decode_error(path: str, dataset: str) -> str | None:
    """Why ``path`` cannot be decoded as training does (None when it can)."""
    try:
        load_rgb(path, dataset)
    except ImageLoadError as error:
        cause = error.__cause__
        return f"{type(cause).__name__}: {' '.join(str(cause).split())}" if cause else str(error)
    return None


def _decode_errors(paths: list[str], dataset: str) -> dict[str, str]:
    """path -> why it does not decode, for every path of ``paths`` that does not."""
    # Decoders release the GIL: threads read several files at once.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(lambda path: _decode_error(path, dataset), paths))
    return {path: reason for path, reason in zip(paths, reasons, strict=True) if reason is not None}


def _image_problems(name: str, splits: DatasetSplits, full: bool) -> list[str]:
    """Missing images (a sample, or all with ``full``) and, with ``full``, every image that does not decode."""
    problems = []
    absent = {split_name: _absent_images(getattr(splits, split_name), full) for split_name in ("train", "val", "test")}
    for split_name, paths in absent.items():
        if paths:
            problems.append(f"{split_name}: {len(paths)} listed image(s) not found, e.g. {paths[0]}")
    if not full:
        return problems
    skip = {path for paths in absent.values() for path in paths}
    listed = dict.fromkeys(item.impath for items in (splits.train, splits.val, splits.test) for item in items)
    corrupt = _decode_errors(
        [path for path in listed if path not in skip], name
    )  # once each: ImageNet's val is its test
    for split_name in ("train", "val", "test"):
        for path in dict.fromkeys(item.impath for item in getattr(splits, split_name)):
            if path in corrupt:
                problems.append(f"{split_name}: corrupt image {path} ({corrupt[path]})")
    return problems


def check_dataset(name: str, root: Path, full: bool = False) -> DatasetStatus:
    """Check one benchmark dataset; see :func:`check_datasets`."""
    layout = layouts()[name]
    root = Path(root).expanduser()
    status = DatasetStatus(name, root / layout.folder, "found", how_to_get=how_to_get(name, root))
    if not status.folder.is_dir():
        status.status = "missing"
        status.missing.append(MissingItem(status.folder, "dir", f"the {name} dataset folder"))
        return status
    for req in layout.requirements:
        path = root / req.path
        exists = path.is_dir() if req.kind == "dir" else path.is_file()
        if exists:
            continue
        if req.unless and all((root / alt).exists() for alt in req.unless):
            status.notes.append(
                f"{path} is absent: a new split will be generated from {', '.join(req.unless)} and saved there; "
                "download the official file to reproduce published numbers"
            )
            continue
        status.missing.append(MissingItem(path, req.kind, req.hint))
    if status.missing:
        status.status = "incomplete"
        return status
    if layout.split_file and not (root / layout.split_file).exists():
        # Reading would write a generated split into the data folder; a check must not change anything.
        return status
    try:
        splits = get_dataset_reader(name)(root)
    except (OSError, ValueError, KeyError) as err:
        status.status = "incomplete"
        status.problems.append(str(err))
        return status
    status.num_images = len(splits.train) + len(splits.val) + len(splits.test)
    status.problems += _image_problems(name, splits, full)
    if status.num_images == 0:
        status.problems.append("the reader found no images")
    if status.problems:
        status.status = "incomplete"
    return status


def check_datasets(root: Path, names: list[str] | None = None, full: bool = False) -> list[DatasetStatus]:
    """Check every benchmark dataset (or ``names``) under the data root ``root``.

    A dataset is ``found`` when all its files are present, its reader runs, and the first image of each class in
    each split exists (with ``full=True``: every image exists and decodes as training decodes it; the corrupt ones
    are listed). Nothing is written: a dataset whose split would be generated
    is reported with a note and not read.
    """
    known = layouts()
    names = list(known) if names is None else names
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"dapt data check: unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [check_dataset(name, root, full=full) for name in names]


def format_table(statuses: list[DatasetStatus]) -> str:
    """A table of dataset, status and image count, followed by what is missing and how to get it."""
    rows = [("dataset", "status", "images", "folder")]
    for s in statuses:
        rows.append((s.name, s.status, "" if s.num_images is None else str(s.num_images), str(s.folder)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(rows[0][3]))
    for s in statuses:
        if s.status == "found" and not s.notes:
            continue
        lines.append("")
        lines.append(f"{s.name}: {s.status}")
        for item in s.missing:
            lines.append(f"  missing {item.kind}: {item.path}" + (f"  ({item.hint})" if item.hint else ""))
        lines += [f"  problem: {problem}" for problem in s.problems]
        lines += [f"  note: {note}" for note in s.notes]
        if s.status != "found":
            lines.append(f"  how to get it: {s.how_to_get}")
    return "\n".join(lines)


def print_table(statuses: list[DatasetStatus], file: TextIO | None = None) -> None:
    """Print :func:`format_table` (to stdout by default)."""
    print(format_table(statuses), file=file)
