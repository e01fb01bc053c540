"""Caltech101 (100 classes: ``BACKGROUND_Google`` and ``Faces_easy`` dropped), as CoOp's ``Caltech101`` reader."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.generated_splits import read_class_folder_dataset
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
from dapt_lightning.data.types import DatasetSplits

IGNORED = ("BACKGROUND_Google", "Faces_easy")
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}

_SPLIT = Resource(
    "split_zhou_Caltech101.json",
    drive_id="1hyarUivQE36mY6jSomru6Fjd-JzwcCzN",
    dest="caltech-101/split_zhou_Caltech101.json",
)

LAYOUT = DatasetLayout(
    name="caltech101",
    folder="caltech-101",
    requirements=(
        Requirement("caltech-101/101_ObjectCategories", "dir", "101_ObjectCategories.tar.gz from the Caltech101 page"),
        Requirement(_SPLIT.dest, "file", _SPLIT.page_url(), unless=("caltech-101/101_ObjectCategories",)),
    ),
    split_file=_SPLIT.dest,
    image_dir="caltech-101/101_ObjectCategories",
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (
        Resource(
            "101_ObjectCategories.tar.gz",
            drive_id="137RyRjvTBkBiIfeYBNZBtViDHQ6_Ewsp",
            dest="caltech-101",
            extract=True,
            md5="b224c7392d521a49829488ab0f1120d9",
        ),
        _SPLIT,
    ),
)


def read_caltech101(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/caltech-101`` from its split file (or split the class folders 50/20/30 if absent)."""
    return read_class_folder_dataset(LAYOUT, root, options, ignored=IGNORED, new_cnames=NEW_CNAMES)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_caltech101,
    layout=LAYOUT,
    download=DOWNLOAD,
    benchmark="fewshot",
    config="caltech101.yaml",
)
