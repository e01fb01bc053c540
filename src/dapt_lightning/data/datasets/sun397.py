"""SUN397 (397 scenes), as CoOp's ``SUN397`` reader: ``/a/abbey`` -> ``abbey``, ``/b/x/outdoor`` -> ``outdoor x``."""

from __future__ import annotations

import os
from pathlib import Path

from dapt_lightning.data.datasets.checks import DatasetError
from dapt_lightning.data.datasets.generated_splits import read_trainval_test_dataset
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
from dapt_lightning.data.types import DatasetSplits, Datum

_SPLIT = Resource(
    "split_zhou_SUN397.json", drive_id="1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq", dest="sun397/split_zhou_SUN397.json"
)

LAYOUT = DatasetLayout(
    name="sun397",
    folder="sun397",
    requirements=(
        Requirement("sun397/SUN397", "dir", "SUN397.tar.gz from https://vision.princeton.edu/projects/2010/SUN/"),
        Requirement(
            _SPLIT.dest,
            "file",
            _SPLIT.page_url(),
            unless=("sun397/ClassName.txt", "sun397/Training_01.txt", "sun397/Testing_01.txt"),
        ),
    ),
    split_file=_SPLIT.dest,
    image_dir="sun397/SUN397",
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (
        Resource(
            "SUN397.tar.gz",
            "http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",
            "sun397",
            extract=True,
            md5="8ca2778205c41d23104230ba66911c7a",
        ),
        _SPLIT,
    ),
)


def sun_classname(folder: str) -> str:
    """``"a/apartment_building/outdoor"`` -> ``"outdoor apartment_building"`` (drop the letter, reverse)."""
    return " ".join(folder.split("/")[1:][::-1])


def _read_list(path: Path, image_dir: Path, cname2lab: dict[str, int]) -> list[Datum]:
    items = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            imname = line.strip()[1:]  # drop the leading "/"
            folder = os.path.dirname(imname)
            if folder not in cname2lab:
                raise DatasetError(f"{path}: class folder {folder!r} is not listed in ClassName.txt")
            items.append(Datum(os.path.join(str(image_dir), imname), cname2lab[folder], sun_classname(folder)))
    return items


def _read_lists(root: Path) -> tuple[list[Datum], list[Datum]]:
    dataset_dir = root / "sun397"
    image_dir = dataset_dir / "SUN397"
    with open(dataset_dir / "ClassName.txt", encoding="utf-8") as handle:
        classnames = [line.strip()[1:] for line in handle]
    cname2lab = {c: i for i, c in enumerate(classnames)}
    trainval = _read_list(dataset_dir / "Training_01.txt", image_dir, cname2lab)
    return trainval, _read_list(dataset_dir / "Testing_01.txt", image_dir, cname2lab)


def read_sun397(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/sun397`` from its split file (or from partition 01, train split 80/20, if absent)."""
    return read_trainval_test_dataset(LAYOUT, root, options, _read_lists)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_sun397,
    layout=LAYOUT,
    download=DOWNLOAD,
    benchmark="fewshot",
    config="sun397.yaml",
)
