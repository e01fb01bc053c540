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

from dapt_lightning.data.datasets.common import (
    DatasetError,
    load_json,
    read_classnames_txt,
    read_split,
    save_split,
    split_trainval,
)
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
        return {folder: folder.replace("_", " ") for folder in folders}
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
    return mapping


def _read_tree(folder: Path, folders: list[str], names: dict[str, str]) -> list[Datum]:
    items = []
    for label, cls in enumerate(folders):
        class_dir = folder / cls
        if class_dir.is_dir():
            items += [Datum(path, label, names[cls]) for path in _image_files(class_dir)]
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
        train, val, test = read_split(split_path, image_dir)
        return DatasetSplits("custom", train, val, test)

    rng = random.Random(opts.seed)
    if (dataset_dir / "train").is_dir() and (dataset_dir / "test").is_dir():
        folders = _class_folders(dataset_dir / "train")
        names = _load_classnames(opts, dataset_dir, folders)
        train = _read_tree(dataset_dir / "train", folders, names)
        test = _read_tree(dataset_dir / "test", folders, names)
        extra = sorted(set(_class_folders(dataset_dir / "test")) - set(folders))
        if extra:
            raise DatasetError(f"{dataset_dir / 'test'} has class folders missing from train/: {', '.join(extra)}")
        if (dataset_dir / "val").is_dir():
            val = _read_tree(dataset_dir / "val", folders, names)
        else:
            train, val = split_trainval(train, p_val=opts.p_val, rng=rng)
    else:
        folders = _class_folders(dataset_dir)
        if not folders:
            raise FileNotFoundError(
                f"dataset 'custom': {dataset_dir} has no {opts.split_file}, no train/ and test/ folders and no class "
                "folders; put each class's images in its own subfolder"
            )
        names = _load_classnames(opts, dataset_dir, folders)
        train, val, test = _split_per_class(_read_tree(dataset_dir, folders, names), opts.p_val, opts.p_test, rng)
    if opts.save_split:
        save_split(train, val, test, split_path, image_dir)
    return DatasetSplits("custom", train, val, test)


RECORD = DatasetRecord(name="custom", reader=read_custom)
