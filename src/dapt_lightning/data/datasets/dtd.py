"""Describable Textures (47 classes), as CoOp's ``DescribableTextures`` reader."""

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
    name="dtd",
    folder="dtd",
    requirements=(
        Requirement("dtd/images", "dir", "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/"),
        Requirement(
            "dtd/split_zhou_DescribableTextures.json",
            "file",
            "https://drive.google.com/file/d/1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x/view",
            unless=("dtd/images",),
        ),
    ),
    split_file="dtd/split_zhou_DescribableTextures.json",
    image_dir="dtd/images",
)


@register_dataset("dtd")
def read_dtd(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/dtd`` from its split file (or split the class folders 50/20/30 if absent)."""
    return read_class_folder_dataset(LAYOUT, root, options)
