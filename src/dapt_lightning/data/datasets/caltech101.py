"""Caltech101 (100 classes: ``BACKGROUND_Google`` and ``Faces_easy`` dropped), as CoOp's ``Caltech101`` reader."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.common import (
    DatasetLayout,
    Requirement,
    read_class_folder_dataset,
)
from dapt_lightning.data.registry import register_dataset
from dapt_lightning.data.types import DatasetSplits

IGNORED = ("BACKGROUND_Google", "Faces_easy")
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}

LAYOUT = DatasetLayout(
    name="caltech101",
    folder="caltech-101",
    requirements=(
        Requirement("caltech-101/101_ObjectCategories", "dir", "101_ObjectCategories.tar.gz from the Caltech101 page"),
        Requirement(
            "caltech-101/split_zhou_Caltech101.json",
            "file",
            "https://drive.google.com/file/d/1hyarUivQE36mY6jSomru6Fjd-JzwcCzN/view",
            unless=("caltech-101/101_ObjectCategories",),
        ),
    ),
    split_file="caltech-101/split_zhou_Caltech101.json",
    image_dir="caltech-101/101_ObjectCategories",
)


@register_dataset("caltech101")
def read_caltech101(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/caltech-101`` from its split file (or split the class folders 50/20/30 if absent)."""
    return read_class_folder_dataset(LAYOUT, root, options, ignored=IGNORED, new_cnames=NEW_CNAMES)
