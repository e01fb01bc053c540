"""Shared helpers for the dataset readers: split_zhou JSON, required files, Dassl's split generators.

Every reader reproduces the official CoOp/DAPT reader of the same name: same folder names, same labels, same item
order. Where the official code lists a directory it either sorts the listing (we sort too) or keeps the order of
``os.listdir`` (we keep it too, via :func:`listdir_nohidden`), because the few-shot sampler draws from the list in
that order: sorting where the official code does not would pick different images for the same seed.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from dapt_lightning.data.records import DatasetLayout
from dapt_lightning.data.types import DatasetSplits, Datum
from dapt_lightning.storage import atomic_write_bytes

SplitTriple = tuple[list[Datum], list[Datum], list[Datum]]
"""train, val and test."""

SPLIT_SEED = 1
"""Seed of the generator that makes a split when its split file is absent (see :func:`split_trainval`)."""


class DatasetError(ValueError):
    """A dataset on disk is malformed (bad split JSON, unknown class in an annotation file, bad options)."""


def missing_hint(name: str, root: Path) -> str:
    """The standard 'what to do' sentence appended to every missing-file error."""
    return (
        f"run `dapt data check --root {root}` to see everything missing, or `dapt data download {name} --root {root}`"
    )


def require(layout: DatasetLayout, root: Path, *paths: str) -> None:
    """Raise ``FileNotFoundError`` naming the dataset, the exact path and what to do, if a path is missing.

    Args:
        layout: The dataset's layout; its requirements supply the per-path hint.
        root: The data root.
        *paths: Paths relative to the data root; default: every requirement of the layout that is not made
            unnecessary by its ``unless`` paths.
    """
    hints = {req.path: req.hint for req in layout.requirements}
    if not paths:
        paths = tuple(
            req.path
            for req in layout.requirements
            if not (req.unless and all((root / alt).exists() for alt in req.unless))
        )
    for rel in paths:
        full = root / rel
        if not full.exists():
            hint = hints.get(rel, "")
            raise FileNotFoundError(
                f"dataset {layout.name!r}: expected {full} but it does not exist"
                + (f" ({hint})" if hint else "")
                + f"; {missing_hint(layout.name, root)}"
            )


def reject_options(name: str, options: Mapping[str, object]) -> None:
    """Built-in readers take no options; say so, naming the setting, instead of ignoring them."""
    if options:
        raise DatasetError(
            f"--data.dataset_options: dataset {name!r} takes no options, got {dict(options)!r}; "
            "only the 'custom' dataset is configurable"
        )


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


def split_trainval(
    trainval: Sequence[Datum], p_val: float = 0.2, rng: random.Random | None = None
) -> tuple[list[Datum], list[Datum]]:
    """Split train+val per class, as the official ``OxfordPets.split_trainval``.

    Classes in order of first appearance; each class's indices are shuffled and the first
    ``round(n * p_val)`` go to val. The official code shuffles with the global ``random`` stream seeded with the
    run's seed, on the first run only, then saves the split; we use ``random.Random(SPLIT_SEED)`` (the same stream
    as the official first run with seed 1) and save the split too, so later runs read the file.
    """
    rng = rng if rng is not None else random.Random(SPLIT_SEED)
    tracker: dict[int, list[int]] = {}
    for idx, item in enumerate(trainval):
        tracker.setdefault(item.label, []).append(idx)
    train: list[Datum] = []
    val: list[Datum] = []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            raise DatasetError(f"class {label} has {len(idxs)} train+val images: too few to hold out {p_val:.0%}")
        rng.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def read_and_split_data(
    image_dir: Path,
    p_trn: float = 0.5,
    p_val: float = 0.2,
    ignored: Sequence[str] = (),
    new_cnames: Mapping[str, str] | None = None,
    rng: random.Random | None = None,
) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Split a one-folder-per-class tree 50/20/30 per class, as the official ``DTD.read_and_split_data``.

    Categories are sorted; the images of each category keep ``os.listdir`` order before being shuffled, so the
    generated split depends on that order (as the official one does); it is written to the split file once.
    """
    rng = rng if rng is not None else random.Random(SPLIT_SEED)
    categories = sorted(c for c in listdir_nohidden(image_dir) if c not in ignored)
    train: list[Datum] = []
    val: list[Datum] = []
    test: list[Datum] = []
    for label, category in enumerate(categories):
        category_dir = os.path.join(str(image_dir), category)
        images = [os.path.join(category_dir, name) for name in listdir_nohidden(Path(category_dir))]
        rng.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        if not (n_train > 0 and n_val > 0 and n_total - n_train - n_val > 0):
            raise DatasetError(f"{category_dir} has {n_total} images: too few to split into train, val and test")
        classname = new_cnames.get(category, category) if new_cnames else category
        train += [Datum(im, label, classname) for im in images[:n_train]]
        val += [Datum(im, label, classname) for im in images[n_train : n_train + n_val]]
        test += [Datum(im, label, classname) for im in images[n_train + n_val :]]
    return train, val, test


def read_or_generate_split(
    layout: DatasetLayout, root: Path, generate: Callable[[], SplitTriple], how: str = "as the official reader does"
) -> SplitTriple:
    """Read the layout's split file, or (as the official readers) generate the split and save it when absent.

    Args:
        layout: the dataset's layout (split file, image folder, requirements).
        root: the data root.
        generate: makes the split.
        how: how ``generate`` splits, for the line that says a split was generated.
    """
    assert layout.split_file is not None and layout.image_dir is not None
    split_path = root / layout.split_file
    image_dir = root / layout.image_dir
    require(layout, root)
    if split_path.exists():
        return read_split(split_path, image_dir)
    split = generate()
    message = (
        f"dataset {layout.name!r}: no split file {split_path.name}, so a split was generated ({how}, seed {SPLIT_SEED})"
    )
    note = "it is not the published split: download the official file to compare with published numbers"
    save_generated_split(split, split_path, image_dir, message, note=note)
    return split


def read_class_folder_dataset(
    layout: DatasetLayout,
    root: Path,
    options: Mapping[str, object],
    ignored: Sequence[str] = (),
    new_cnames: Mapping[str, str] | None = None,
) -> DatasetSplits:
    """A dataset of one folder per class (``layout.image_dir``): read its split file, or split the folders
    50/20/30 per class and save the split when the file is absent (CoOp's DTD, Food101, Caltech101, EuroSAT)."""
    reject_options(layout.name, options)
    root = Path(root)
    assert layout.image_dir is not None
    image_dir = root / layout.image_dir
    train, val, test = read_or_generate_split(
        layout,
        root,
        lambda: read_and_split_data(image_dir, ignored=ignored, new_cnames=new_cnames),
        how=f"50/20/30 of each class folder of {image_dir}",
    )
    return DatasetSplits(layout.name, train, val, test)


def read_trainval_test_dataset(
    layout: DatasetLayout,
    root: Path,
    options: Mapping[str, object],
    read_lists: Callable[[Path], tuple[list[Datum], list[Datum]]],
) -> DatasetSplits:
    """A dataset with official train+val and test lists: read its split file, or (as CoOp's OxfordPets, StanfordCars,
    SUN397 and UCF101 readers) split the train+val list 80/20 per class and save the split when the file is absent.

    Args:
        layout: the dataset's layout (split file, image folder, requirements).
        root: the data root.
        options: ``--data.dataset_options`` (built-in datasets take none).
        read_lists: ``root`` -> the train+val and test lists, read from the dataset's own annotation files.
    """
    reject_options(layout.name, options)
    root = Path(root)

    def generate() -> SplitTriple:
        trainval, test = read_lists(root)
        train, val = split_trainval(trainval)
        return train, val, test

    train, val, test = read_or_generate_split(layout, root, generate, how="80/20 of each class of the train+val list")
    return DatasetSplits(layout.name, train, val, test)
