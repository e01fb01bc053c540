"""Dassl's split generators, for datasets whose split file is absent: 80/20 of a train+val list or 50/20/30 of each
class folder, per class, from a stream seeded with :data:`SPLIT_SEED`; and the two kinds of reader built on them.

Every reader reproduces the official CoOp/DAPT reader of the same name: same folder names, same labels, same item
order. Where the official code lists a directory it either sorts the listing (we sort too) or keeps the order of
``os.listdir`` (we keep it too, via ``files.listdir_nohidden``), because the few-shot sampler draws from the list in
that order: sorting where the official code does not would pick different images for the same seed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dapt_lightning.data.datasets.checks import DatasetError, reject_options, require
from dapt_lightning.data.datasets.files import listdir_nohidden
from dapt_lightning.data.datasets.split_files import SplitTriple, read_split, save_generated_split
from dapt_lightning.data.records import DatasetLayout
from dapt_lightning.data.types import DatasetSplits, Datum

SPLIT_SEED = 1
"""Seed of the generator that makes a split when its split file is absent (see :func:`split_trainval`)."""


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
