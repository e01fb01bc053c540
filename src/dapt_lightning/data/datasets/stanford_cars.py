"""Stanford Cars (196 models), as CoOp's ``StanfordCars`` reader: the model year is moved to the front."""

from __future__ import annotations

import os
from pathlib import Path

from dapt_lightning.data.datasets.generated_splits import read_trainval_test_dataset
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
from dapt_lightning.data.types import DatasetSplits, Datum

_SPLIT = Resource(
    "split_zhou_StanfordCars.json",
    drive_id="1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT",
    dest="stanford_cars/split_zhou_StanfordCars.json",
)

LAYOUT = DatasetLayout(
    name="stanford_cars",
    folder="stanford_cars",
    requirements=(
        Requirement("stanford_cars/cars_train", "dir", "cars_train.tgz (Stanford Cars train images)"),
        Requirement("stanford_cars/cars_test", "dir", "cars_test.tgz (Stanford Cars test images)"),
        Requirement(
            _SPLIT.dest,
            "file",
            _SPLIT.page_url(),
            unless=(
                "stanford_cars/devkit/cars_train_annos.mat",
                "stanford_cars/devkit/cars_meta.mat",
                "stanford_cars/cars_test_annos_withlabels.mat",
            ),
        ),
    ),
    split_file=_SPLIT.dest,
    # The split's paths start with cars_train/ or cars_test/, relative to the dataset folder itself.
    image_dir="stanford_cars",
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (_SPLIT,),
    manual=(
        "The Stanford Cars images are no longer served at their original URLs "
        "(http://ai.stanford.edu/~jkrause/car196/). Get cars_train.tgz, cars_test.tgz, car_devkit.tgz and "
        "cars_test_annos_withlabels.mat from a mirror and extract them to ROOT/stanford_cars/ so that it holds "
        "cars_train/, cars_test/, devkit/ and cars_test_annos_withlabels.mat."
    ),
)


def year_first(classname: str) -> str:
    """``"AM General Hummer SUV 2000"`` -> ``"2000 AM General Hummer SUV"``, as the official reader."""
    names = classname.split(" ")
    year = names.pop(-1)
    names.insert(0, year)
    return " ".join(names)


def _read_mat(dataset_dir: Path, image_folder: str, anno_file: Path, meta_file: Path) -> list[Datum]:
    from scipy.io import loadmat  # imported here: scipy is only needed when the split file is absent

    annotations = loadmat(str(anno_file))["annotations"][0]
    class_names = loadmat(str(meta_file))["class_names"][0]
    items = []
    for record in annotations:
        imname = str(record["fname"][0])
        label = int(record["class"][0, 0]) - 1
        impath = os.path.join(str(dataset_dir), image_folder, imname)
        items.append(Datum(impath, label, year_first(str(class_names[label][0]))))
    return items


def _read_lists(root: Path) -> tuple[list[Datum], list[Datum]]:
    dataset_dir = root / "stanford_cars"
    meta = dataset_dir / "devkit/cars_meta.mat"
    trainval = _read_mat(dataset_dir, "cars_train", dataset_dir / "devkit/cars_train_annos.mat", meta)
    return trainval, _read_mat(dataset_dir, "cars_test", dataset_dir / "cars_test_annos_withlabels.mat", meta)


def read_stanford_cars(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/stanford_cars`` from its split file (or from the devkit ``.mat`` files, train split 80/20)."""
    return read_trainval_test_dataset(LAYOUT, root, options, _read_lists)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_stanford_cars,
    layout=LAYOUT,
    download=DOWNLOAD,
    benchmark="fewshot",
    config="stanfordcars.yaml",
)
