"""Food-101 (101 dishes), as CoOp's ``Food101`` reader."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.common import (
    DatasetLayout,
    Requirement,
    read_class_folder_dataset,
)
from dapt_lightning.data.registry import register_dataset
from dapt_lightning.data.types import DatasetSplits

LAYOUT = DatasetLayout(
    name="food101",
    folder="food-101",
    requirements=(
        Requirement(
            "food-101/images", "dir", "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/food-101.tar.gz"
        ),
        Requirement(
            "food-101/split_zhou_Food101.json",
            "file",
            "https://drive.google.com/file/d/1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl/view",
            unless=("food-101/images",),
        ),
    ),
    split_file="food-101/split_zhou_Food101.json",
    image_dir="food-101/images",
)


@register_dataset("food101")
def read_food101(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/food-101`` from its split file (or split the class folders 50/20/30 if absent)."""
    return read_class_folder_dataset(LAYOUT, root, options)
