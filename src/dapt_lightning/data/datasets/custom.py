"""Users' own data: a split_zhou JSON, a ``train/ [val/] test/`` tree, or one folder per class.

Options arrive as ``--data.dataset_options`` (a dict passed as keyword arguments to the reader), e.g.::

    --data.dataset custom --data.dataset_options '{"path": "my_birds", "classnames": "classnames.txt"}'
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass
from pathlib import Path

from dapt_lightning.data.datasets.checks import DatasetError
from dapt_lightning.data.datasets.files import load_json, read_classnames_txt
from dapt_lightning.data.datasets.generated_splits import split_trainval
from dapt_lightning.data.datasets.split_files import SplitTriple, read_split, save_generated_split
from dapt_lightning.data.records import DatasetRecord
from dapt_lightning.data.types import DatasetSplits, Datum

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class CustomDatasetOptions:
    """Options of the ``custom`` dataset (every field is a key of ``--data.dataset_options``)."""

    path: str = "custom"
    """Dataset folder: absolute, or relative to the data root."""
    split_file: str = "split_zhou_custom.json"
    """split_zhou JSON inside ``path``; read when present, written after generating a split from folders."""
    image_dir: str = ""
    """Folder (inside ``path``) the split file's relative image paths start from; ``""`` is ``path`` itself."""
    classnames: str = "folder"
    """Class-name source for folder layouts: ``"folder"`` (folder name, ``_`` -> space), or a file inside
    ``path``: ``*.json`` (``{"folder": "class name"}``) or a text file (``folder class name`` per line)."""
    seed: int = 1
    """Seed of the split generated from folders (written to ``split_file`` so later runs read it back)."""
    p_val: float = 0.2
    """Share of each class held out for val when the folders give no val split."""
    p_test: float = 0.3
    """Share of each class held out for test when the folders are one per class with no train/test split."""
    save_split: bool = True
    """Write the generated split to ``split_file`` (so that it never changes)."""


def _image_files(folder: Path) -> list[str]:
    # Sorted, unlike the official readers' os.listdir order: a new dataset has no history to match, and sorting
    # makes the generated split the same on every machine.
    return sorted(
        os.path.join(str(folder), name)
        for name in os.listdir(folder)
        if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS) and (folder / name).is_file()
    )


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _load_classnames(opts: CustomDatasetOptions, dataset_dir: Path, folders: list[str]) -> dict[str, str]:
    if opts.classnames == "folder":
        names = {folder: folder.replace("_", " ") for folder in folders}
        _require_distinct_names(names, dataset_dir, "'_' becomes a space: rename or merge the folders")
        return names
    source = dataset_dir / opts.classnames
    if not source.is_file():
        raise FileNotFoundError(
            f"dataset 'custom': --data.dataset_options.classnames points at {source}, which does not exist; "
            "use 'folder' or a JSON/text file inside the dataset folder"
        )
    if source.suffix.lower() == ".json":
        mapping = load_json(source, "class-name file")
        if not isinstance(mapping, dict):
            raise DatasetError(f"class-name file {source} must hold a JSON object {{folder: class name}}")
        mapping = {str(k): str(v) for k, v in mapping.items()}
    else:
        mapping = read_classnames_txt(source)
    missing = [folder for folder in folders if folder not in mapping]
    if missing:
        raise DatasetError(f"class-name file {source} has no entry for the class folder(s) {', '.join(missing)}")
    names = {folder: mapping[folder] for folder in folders}
    _require_distinct_names(names, dataset_dir, f"as {source} names them: give each folder its own name")
    return names


def _require_distinct_names(names: dict[str, str], dataset_dir: Path, why: str) -> None:
    """Two folders with one class name would be two labels the text encoder cannot tell apart."""
    folders_of: dict[str, list[str]] = {}
    for folder, name in names.items():
        folders_of.setdefault(name, []).append(folder)
    clashes = [
        f"{' and '.join(map(repr, folders))} -> {name!r}" for name, folders in folders_of.items() if len(folders) > 1
    ]
    if clashes:
        raise DatasetError(
            f"dataset 'custom': class folders of {dataset_dir} become one class name ({'; '.join(clashes)}; {why})"
        )


def _require_two_classes(classnames: list[str], dataset_dir: Path, where: str) -> None:
    if len(classnames) < 2:
        found = f"only {classnames[0]!r}" if classnames else "none"
        raise DatasetError(
            f"dataset 'custom': {dataset_dir} has {len(classnames)} class{'' if classnames else 'es'} ({where}: "
            f"{found}), but classification needs at least two; add a folder of images for each class"
        )


def _read_tree(folder: Path, folders: list[str], names: dict[str, str]) -> list[Datum]:
    items = []
    empty = []
    for label, cls in enumerate(folders):
        class_dir = folder / cls
        if not class_dir.is_dir():
            continue  # a split may lack a class (test/ without images of it)
        images = _image_files(class_dir)
        if not images:
            empty.append(str(class_dir))
        items += [Datum(path, label, names[cls]) for path in images]
    if empty:
        raise DatasetError(
            f"dataset 'custom': class folder(s) without images: {', '.join(empty)} (images are found by the "
            f"extensions {', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder(s)"
        )
    return items


def _split_per_class(
    items: list[Datum], p_val: float, p_test: float, rng: random.Random
) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Shuffle each class and cut it into train/val/test, rounding as Dassl's ``read_and_split_data``."""
    by_label: dict[int, list[Datum]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    train: list[Datum] = []
    val: list[Datum] = []
    test: list[Datum] = []
    for label, class_items in by_label.items():
        rng.shuffle(class_items)
        n_total = len(class_items)
        n_val, n_test = round(n_total * p_val), round(n_total * p_test)
        n_train = n_total - n_val - n_test
        if min(n_train, n_val, n_test) <= 0:
            raise DatasetError(
                f"dataset 'custom': class {class_items[0].classname!r} (label {label}) has {n_total} images, "
                "too few to split into train, val and test; add images or provide train/ and test/ folders"
            )
        train += class_items[:n_train]
        val += class_items[n_train : n_train + n_val]
        test += class_items[n_train + n_val :]
    return train, val, test


def read_custom(root: Path, **options: object) -> DatasetSplits:
    """Read a user dataset; see :class:`CustomDatasetOptions` for the options.

    Layouts, tried in order inside ``path``:

    1. ``split_file`` exists: a split_zhou JSON (``{"train"|"val"|"test": [[relpath, label, classname], ...]}``).
    2. ``train/`` and ``test/`` (and optionally ``val/``) each holding one folder per class; labels follow the
       sorted class folders of ``train/``; without ``val/``, ``p_val`` of each training class is held out.
    3. One folder per class: each class is split ``1 - p_val - p_test`` / ``p_val`` / ``p_test``.

    Generated splits are written to ``split_file`` (unless ``save_split`` is false) so that they never change.
    """
    field_names = {f.name for f in dataclasses.fields(CustomDatasetOptions)}
    unknown = sorted(set(options) - field_names)
    if unknown:
        raise DatasetError(
            f"--data.dataset_options: unknown option(s) {', '.join(unknown)} for dataset 'custom'; "
            f"choose from {', '.join(sorted(field_names))}"
        )
    opts = CustomDatasetOptions(**options)  # type: ignore[arg-type]
    if not 0 < opts.p_val < 1 or not 0 < opts.p_test < 1 or opts.p_val + opts.p_test >= 1:
        raise DatasetError(
            f"--data.dataset_options: p_val and p_test must be in (0, 1) with a sum below 1, got "
            f"p_val={opts.p_val}, p_test={opts.p_test}"
        )
    root = Path(root)
    dataset_dir = Path(opts.path) if Path(opts.path).is_absolute() else root / opts.path
    if not dataset_dir.is_dir():
        raise FileNotFoundError(
            f"dataset 'custom': expected the folder {dataset_dir} (--data.dataset_options.path={opts.path!r}, "
            f"relative to the data root {root}); create it with one subfolder per class"
        )
    split_path = dataset_dir / opts.split_file
    image_dir = dataset_dir / opts.image_dir if opts.image_dir else dataset_dir
    if split_path.is_file():
        splits = DatasetSplits("custom", *read_split(split_path, image_dir))
        _require_two_classes(splits.classnames, dataset_dir, f"listed by {split_path}")
        return splits

    if (dataset_dir / "train").is_dir() and (dataset_dir / "test").is_dir():
        split, how = _split_from_train_test_folders(opts, dataset_dir)
    else:
        split, how = _split_from_class_folders(opts, dataset_dir)
    message = f"dataset 'custom': no {opts.split_file} in {dataset_dir}, so the split was made from its folders ({how})"
    save_generated_split(split, split_path, image_dir, message, save=opts.save_split)
    return DatasetSplits("custom", *split)


def _split_from_train_test_folders(opts: CustomDatasetOptions, dataset_dir: Path) -> tuple[SplitTriple, str]:
    """Layout 2 of :func:`read_custom`, and how the split was made."""
    folders = _class_folders(dataset_dir / "train")
    _require_two_classes(folders, dataset_dir, f"class folders in {dataset_dir / 'train'}")
    names = _load_classnames(opts, dataset_dir, folders)
    for other in ("val", "test"):
        given = _class_folders(dataset_dir / other) if (dataset_dir / other).is_dir() else []
        extra = sorted(set(given) - set(folders))
        if extra:
            raise DatasetError(f"{dataset_dir / other} has class folders missing from train/: {', '.join(extra)}")
    train = _read_tree(dataset_dir / "train", folders, names)
    test = _read_tree(dataset_dir / "test", folders, names)
    if (dataset_dir / "val").is_dir():
        return (train, _read_tree(dataset_dir / "val", folders, names), test), "train/, val/ and test/ as given"
    train, val = split_trainval(train, p_val=opts.p_val, rng=random.Random(opts.seed))
    return (train, val, test), f"{opts.p_val:.0%} of each class of train/ held out for val, seed {opts.seed}"


def _split_from_class_folders(opts: CustomDatasetOptions, dataset_dir: Path) -> tuple[SplitTriple, str]:
    """Layout 3 of :func:`read_custom`, and how the split was made."""
    folders = _class_folders(dataset_dir)
    if not folders:
        raise FileNotFoundError(
            f"dataset 'custom': {dataset_dir} has no {opts.split_file}, no train/ and test/ folders and no class "
            "folders; put each class's images in its own subfolder"
        )
    _require_two_classes(folders, dataset_dir, "class folders")
    names = _load_classnames(opts, dataset_dir, folders)
    items = _read_tree(dataset_dir, folders, names)
    split = _split_per_class(items, opts.p_val, opts.p_test, random.Random(opts.seed))
    shares = f"{1 - opts.p_val - opts.p_test:.0%}/{opts.p_val:.0%}/{opts.p_test:.0%}"
    return split, f"{shares} of each class folder into train/val/test, seed {opts.seed}"


RECORD = DatasetRecord(name="custom", reader=read_custom)
