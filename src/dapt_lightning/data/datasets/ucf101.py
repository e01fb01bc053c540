"""UCF101 middle frames (101 actions), as CoOp's ``UCF101`` reader: ``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from dapt_lightning.data.datasets.checks import DatasetError
from dapt_lightning.data.datasets.generated_splits import read_trainval_test_dataset
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
from dapt_lightning.data.types import DatasetSplits, Datum

_FRAMES = Resource("UCF-101-midframes.zip", drive_id="10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O", dest="ucf101", extract=True)
_SPLIT = Resource(
    "split_zhou_UCF101.json", drive_id="1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y", dest="ucf101/split_zhou_UCF101.json"
)

LAYOUT = DatasetLayout(
    name="ucf101",
    folder="ucf101",
    requirements=(
        Requirement("ucf101/UCF-101-midframes", "dir", f"{_FRAMES.filename} from {_FRAMES.page_url()}"),
        Requirement(
            _SPLIT.dest,
            "file",
            _SPLIT.page_url(),
            unless=(
                "ucf101/ucfTrainTestlist/classInd.txt",
                "ucf101/ucfTrainTestlist/trainlist01.txt",
                "ucf101/ucfTrainTestlist/testlist01.txt",
            ),
        ),
    ),
    split_file=_SPLIT.dest,
    image_dir="ucf101/UCF-101-midframes",
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (_FRAMES, _SPLIT),
)


def split_camel_case(action: str) -> str:
    """``"ApplyEyeMakeup"`` -> ``"Apply_Eye_Makeup"`` (each capital starts a word, as the official regex)."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


def _read_list(path: Path, image_dir: Path, cname2lab: dict[str, int]) -> list[Datum]:
    items = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            entry = line.strip().split(" ")[0]  # trainlist lines also carry a label
            action, filename = entry.split("/")
            if action not in cname2lab:
                raise DatasetError(f"{path}: action {action!r} is not listed in classInd.txt")
            renamed = split_camel_case(action)
            impath = os.path.join(str(image_dir), renamed, filename.replace(".avi", ".jpg"))
            items.append(Datum(impath, cname2lab[action], renamed))
    return items


def _read_lists(root: Path) -> tuple[list[Datum], list[Datum]]:
    dataset_dir = root / "ucf101"
    image_dir = dataset_dir / "UCF-101-midframes"
    cname2lab = {}
    with open(dataset_dir / "ucfTrainTestlist/classInd.txt", encoding="utf-8") as handle:
        for line in handle:
            label, classname = line.strip().split(" ")
            cname2lab[classname] = int(label) - 1
    trainval = _read_list(dataset_dir / "ucfTrainTestlist/trainlist01.txt", image_dir, cname2lab)
    return trainval, _read_list(dataset_dir / "ucfTrainTestlist/testlist01.txt", image_dir, cname2lab)


def read_ucf101(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/ucf101`` from its split file (or from split 01 of ``ucfTrainTestlist``, 80/20, if absent)."""
    return read_trainval_test_dataset(LAYOUT, root, options, _read_lists)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_ucf101,
    layout=LAYOUT,
    download=DOWNLOAD,
    template="a photo of a person doing {}.",
    benchmark="fewshot",
    config="ucf101.yaml",
)
