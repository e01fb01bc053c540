"""FGVC-Aircraft (100 variants), as CoOp's ``FGVCAircraft`` reader: the dataset's own train/val/test lists."""

from __future__ import annotations

import os
from pathlib import Path

from dapt_lightning.data.datasets.checks import DatasetError, reject_options, require
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
from dapt_lightning.data.types import DatasetSplits, Datum

_ARCHIVE = "fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (keep only data/)"

LAYOUT = DatasetLayout(
    name="fgvc_aircraft",
    folder="fgvc_aircraft",
    requirements=(
        Requirement("fgvc_aircraft/images", "dir", _ARCHIVE),
        Requirement("fgvc_aircraft/variants.txt", "file", _ARCHIVE),
        Requirement("fgvc_aircraft/images_variant_train.txt", "file", _ARCHIVE),
        Requirement("fgvc_aircraft/images_variant_val.txt", "file", _ARCHIVE),
        Requirement("fgvc_aircraft/images_variant_test.txt", "file", _ARCHIVE),
    ),
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (
        Resource(
            "fgvc-aircraft-2013b.tar.gz",
            "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
            "fgvc_aircraft",
            extract=True,
            strip="fgvc-aircraft-2013b/data/",
        ),
    ),
)


def _read_list(path: Path, image_dir: Path, cname2lab: dict[str, int]) -> list[Datum]:
    items = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            # "1025794 707-320": image id, then the variant name (which may contain spaces).
            parts = line.strip().split(" ")
            classname = " ".join(parts[1:])
            if classname not in cname2lab:
                raise DatasetError(f"{path}: variant {classname!r} is not listed in variants.txt")
            items.append(Datum(os.path.join(str(image_dir), parts[0] + ".jpg"), cname2lab[classname], classname))
    return items


def read_fgvc_aircraft(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/fgvc_aircraft``: labels follow ``variants.txt``; splits are ``images_variant_*.txt``."""
    reject_options(LAYOUT.name, options)
    root = Path(root)
    require(LAYOUT, root)
    dataset_dir = root / "fgvc_aircraft"
    with open(dataset_dir / "variants.txt", encoding="utf-8") as handle:
        classnames = [line.strip() for line in handle]
    cname2lab = {c: i for i, c in enumerate(classnames)}
    image_dir = dataset_dir / "images"
    train, val, test = (
        _read_list(dataset_dir / f"images_variant_{split}.txt", image_dir, cname2lab)
        for split in ("train", "val", "test")
    )
    return DatasetSplits(LAYOUT.name, train, val, test, classnames)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_fgvc_aircraft,
    layout=LAYOUT,
    download=DOWNLOAD,
    template="a photo of a {}, a type of aircraft.",
    benchmark="fewshot",
    config="fgvcaircraft.yaml",
)
