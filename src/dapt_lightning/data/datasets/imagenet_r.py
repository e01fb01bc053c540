"""ImageNet-R: 200 classes of renditions (evaluation only), as CoOp's reader of the same name."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.common import DatasetLayout, Requirement, reject_options
from dapt_lightning.data.datasets.imagenet import CLASSNAMES_URL
from dapt_lightning.data.datasets.imagenet_variants import IGNORED, read_wnid_folders
from dapt_lightning.data.registry import register_dataset
from dapt_lightning.data.types import DatasetSplits

LAYOUT = DatasetLayout(
    name="imagenet_r",
    folder="imagenet-rendition",
    requirements=(
        Requirement(
            "imagenet-rendition/imagenet-r", "dir", "imagenet-r.tar from https://github.com/hendrycks/imagenet-r"
        ),
        Requirement(
            "imagenet-rendition/classnames.txt", "file", "copy imagenet/classnames.txt (" + CLASSNAMES_URL + ")"
        ),
    ),
)


@register_dataset("imagenet_r")
def read_imagenet_r(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/imagenet-rendition/imagenet-r`` (test split only; labels over its sorted class folders)."""
    reject_options(LAYOUT.name, options)
    return read_wnid_folders(LAYOUT, Path(root), "imagenet-r", IGNORED)
