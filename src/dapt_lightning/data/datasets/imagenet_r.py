"""ImageNet-R: 200 classes of renditions (evaluation only), as CoOp's reader of the same name."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.checks import reject_options
from dapt_lightning.data.datasets.imagenet import classnames_requirement, classnames_resource
from dapt_lightning.data.datasets.imagenet_variants import IGNORED, read_wnid_folders
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
from dapt_lightning.data.types import DatasetSplits

LAYOUT = DatasetLayout(
    name="imagenet_r",
    folder="imagenet-rendition",
    requirements=(
        Requirement(
            "imagenet-rendition/imagenet-r", "dir", "imagenet-r.tar from https://github.com/hendrycks/imagenet-r"
        ),
        classnames_requirement("imagenet-rendition"),
    ),
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (
        Resource(
            "imagenet-r.tar",
            "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
            "imagenet-rendition",
            extract=True,
        ),
        classnames_resource("imagenet-rendition"),
    ),
)


def read_imagenet_r(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/imagenet-rendition/imagenet-r`` (test split only; labels over its sorted class folders)."""
    reject_options(LAYOUT.name, options)
    return read_wnid_folders(LAYOUT, Path(root), "imagenet-r", IGNORED)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_imagenet_r,
    layout=LAYOUT,
    download=DOWNLOAD,
    benchmark="domain_shift",
    config="imagenet_r.yaml",
    max_epochs=50,
)
