"""Shared reader for the test-only ImageNet variants (Sketch, A, R), which label their sorted wnid folders."""

from __future__ import annotations

import os
from pathlib import Path

from dapt_lightning.data.datasets.checks import require
from dapt_lightning.data.datasets.files import listdir_nohidden, read_classnames_txt
from dapt_lightning.data.datasets.imagenet import classname_of
from dapt_lightning.data.records import DatasetLayout
from dapt_lightning.data.types import DatasetSplits, Datum

IGNORED = ("README.txt",)


def read_wnid_folders(layout: DatasetLayout, root: Path, image_folder: str, ignored: tuple[str, ...]) -> DatasetSplits:
    """Labels are the sorted (non-hidden) entries of ``image_folder`` minus ``ignored``; test-only splits.

    ImageNet-A and -R hold 200 of the 1000 classes, so their labels run over those 200 folders (as the official
    readers), with names from the full ``classnames.txt``.
    """
    require(layout, root)
    dataset_dir = root / layout.folder
    classnames_file = dataset_dir / "classnames.txt"
    classnames = read_classnames_txt(classnames_file)
    image_dir = dataset_dir / image_folder
    folders = [f for f in listdir_nohidden(image_dir, sort=True) if f not in ignored]
    items = []
    for label, folder in enumerate(folders):
        classname = classname_of(classnames, folder, classnames_file)
        class_dir = os.path.join(str(image_dir), folder)
        items += [Datum(os.path.join(class_dir, name), label, classname) for name in listdir_nohidden(Path(class_dir))]
    return DatasetSplits(layout.name, [], [], items)
