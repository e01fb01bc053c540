"""Food-101 (101 dishes), as CoOp's ``Food101`` reader."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.generated_splits import read_class_folder_dataset
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
from dapt_lightning.data.types import DatasetSplits

_SPLIT = Resource(
    "split_zhou_Food101.json", drive_id="1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl", dest="food-101/split_zhou_Food101.json"
)

LAYOUT = DatasetLayout(
    name="food101",
    folder="food-101",
    requirements=(
        Requirement(
            "food-101/images", "dir", "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/food-101.tar.gz"
        ),
        Requirement(_SPLIT.dest, "file", _SPLIT.page_url(), unless=("food-101/images",)),
    ),
    split_file=_SPLIT.dest,
    image_dir="food-101/images",
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (
        # The archive's top folder is food-101/, so it is extracted into the data root itself.
        Resource(
            "food-101.tar.gz",
            "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
            "",
            extract=True,
            md5="85eeb15f3717b99a5da872d97d918f87",
        ),
        _SPLIT,
    ),
)


def read_food101(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/food-101`` from its split file (or split the class folders 50/20/30 if absent)."""
    return read_class_folder_dataset(LAYOUT, root, options)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_food101,
    layout=LAYOUT,
    download=DOWNLOAD,
    template="a photo of {}, a type of food.",
    benchmark="fewshot",
    config="food101.yaml",
)
