"""Oxford-IIIT Pets (37 breeds), as CoOp's ``OxfordPets`` reader."""

from __future__ import annotations

import os
from pathlib import Path

from dapt_lightning.data.datasets.common import (
    DatasetError,
    DatasetLayout,
    Requirement,
    read_or_generate_split,
    reject_options,
    split_trainval,
)
from dapt_lightning.data.registry import register_dataset
from dapt_lightning.data.types import DatasetSplits, Datum

LAYOUT = DatasetLayout(
    name="oxford_pets",
    folder="oxford_pets",
    requirements=(
        Requirement("oxford_pets/images", "dir", "images.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/"),
        Requirement(
            "oxford_pets/split_zhou_OxfordPets.json",
            "file",
            "https://drive.google.com/file/d/1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs/view",
            unless=("oxford_pets/annotations/trainval.txt", "oxford_pets/annotations/test.txt"),
        ),
    ),
    split_file="oxford_pets/split_zhou_OxfordPets.json",
    image_dir="oxford_pets/images",
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


@register_dataset("oxford_pets")
def read_oxford_pets(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/oxford_pets`` from its split file (or split ``annotations/trainval.txt`` 80/20 if absent)."""
    reject_options(LAYOUT.name, options)
    root = Path(root)
    image_dir = root / "oxford_pets/images"

    def generate() -> tuple[list[Datum], list[Datum], list[Datum]]:
        trainval = _read_annotations(root / "oxford_pets/annotations/trainval.txt", image_dir)
        test = _read_annotations(root / "oxford_pets/annotations/test.txt", image_dir)
        train, val = split_trainval(trainval)
        return train, val, test

    train, val, test = read_or_generate_split(LAYOUT, root, generate)
    return DatasetSplits(LAYOUT.name, train, val, test)
