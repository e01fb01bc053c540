"""Describable Textures (47 classes), as CoOp's ``DescribableTextures`` reader."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.generated_splits import read_class_folder_dataset
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
from dapt_lightning.data.types import DatasetSplits

_SPLIT = Resource(
    "split_zhou_DescribableTextures.json",
    drive_id="1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x",
    dest="dtd/split_zhou_DescribableTextures.json",
)

LAYOUT = DatasetLayout(
    name="dtd",
    folder="dtd",
    requirements=(
        Requirement("dtd/images", "dir", "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/"),
        Requirement(_SPLIT.dest, "file", _SPLIT.page_url(), unless=("dtd/images",)),
    ),
    split_file=_SPLIT.dest,
    image_dir="dtd/images",
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (
        Resource(
            "dtd-r1.0.1.tar.gz",
            "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
            "",
            extract=True,
            md5="fff73e5086ae6bdbea199a49dfb8a4c1",
        ),
        _SPLIT,
    ),
)


def read_dtd(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/dtd`` from its split file (or split the class folders 50/20/30 if absent)."""
    return read_class_folder_dataset(LAYOUT, root, options)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_dtd,
    layout=LAYOUT,
    download=DOWNLOAD,
    template="{} texture.",
    benchmark="fewshot",
    config="dtd.yaml",
)
