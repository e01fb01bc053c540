"""ImageNet-Sketch: 1000 classes of sketches (evaluation only), as CoOp's reader of the same name."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.checks import reject_options
from dapt_lightning.data.datasets.imagenet import classnames_requirement, classnames_resource
from dapt_lightning.data.datasets.imagenet_variants import read_wnid_folders
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement
from dapt_lightning.data.types import DatasetSplits

LAYOUT = DatasetLayout(
    name="imagenet_sketch",
    folder="imagenet-sketch",
    requirements=(
        Requirement(
            "imagenet-sketch/images",
            "dir",
            "ImageNet-Sketch (https://github.com/HaohanWang/ImageNet-Sketch); rename its sketch/ folder to images/",
        ),
        classnames_requirement("imagenet-sketch"),
    ),
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (classnames_resource("imagenet-sketch"),),
    manual=(
        "Download ImageNet-Sketch from https://github.com/HaohanWang/ImageNet-Sketch (Google Drive or Kaggle) "
        "and extract it so that the class folders are ROOT/imagenet-sketch/images/n01440764/... "
        "(the archive names that folder sketch/: rename it to images/)."
    ),
)


def read_imagenet_sketch(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/imagenet-sketch/images`` (test split only; labels over its sorted class folders)."""
    reject_options(LAYOUT.name, options)
    return read_wnid_folders(LAYOUT, Path(root), "images", ())


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_imagenet_sketch,
    layout=LAYOUT,
    download=DOWNLOAD,
    benchmark="domain_shift",
    config="imagenet_sketch.yaml",
    max_epochs=50,
)
