"""Oxford-IIIT Pets (37 breeds), as CoOp's ``OxfordPets`` reader."""

from __future__ import annotations

import os
from pathlib import Path

from dapt_lightning.data.datasets.checks import DatasetError
from dapt_lightning.data.datasets.generated_splits import read_trainval_test_dataset
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
from dapt_lightning.data.types import DatasetSplits, Datum

_SPLIT = Resource(
    "split_zhou_OxfordPets.json",
    drive_id="1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs",
    dest="oxford_pets/split_zhou_OxfordPets.json",
)

LAYOUT = DatasetLayout(
    name="oxford_pets",
    folder="oxford_pets",
    requirements=(
        Requirement("oxford_pets/images", "dir", "images.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/"),
        Requirement(
            _SPLIT.dest,
            "file",
            _SPLIT.page_url(),
            unless=("oxford_pets/annotations/trainval.txt", "oxford_pets/annotations/test.txt"),
        ),
    ),
    split_file=_SPLIT.dest,
    image_dir="oxford_pets/images",
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (
        Resource(
            "images.tar.gz",
            "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
            "oxford_pets",
            extract=True,
            md5="5c4f3ee8e5d25df40f4fd59a7f44e54c",
        ),
        Resource(
            "annotations.tar.gz",
            "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
            "oxford_pets",
            extract=True,
            md5="95a8c909bbe2e81eed6a22bccdf3f68f",
        ),
        _SPLIT,
    ),
)


def _read_annotations(path: Path, image_dir: Path) -> list[Datum]:
    # Lines look like "Abyssinian_100 1 1 1": image stem, 1-based class id, species, breed id.
    items = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.strip().split(" ")
            if len(parts) != 4:
                raise DatasetError(f"{path}:{line_no}: expected 'image class species breed', got {line.strip()!r}")
            imname, label = parts[0], parts[1]
            breed = "_".join(imname.split("_")[:-1]).lower()
            items.append(Datum(os.path.join(str(image_dir), imname + ".jpg"), int(label) - 1, breed))
    return items


def _read_lists(root: Path) -> tuple[list[Datum], list[Datum]]:
    image_dir = root / "oxford_pets/images"
    trainval = _read_annotations(root / "oxford_pets/annotations/trainval.txt", image_dir)
    return trainval, _read_annotations(root / "oxford_pets/annotations/test.txt", image_dir)


def read_oxford_pets(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/oxford_pets`` from its split file (or split ``annotations/trainval.txt`` 80/20 if absent)."""
    return read_trainval_test_dataset(LAYOUT, root, options, _read_lists)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_oxford_pets,
    layout=LAYOUT,
    download=DOWNLOAD,
    template="a photo of a {}, a type of pet.",
    benchmark="fewshot",
    config="oxfordpets.yaml",
)
