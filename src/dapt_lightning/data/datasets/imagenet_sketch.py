"""ImageNet-Sketch: 1000 classes of sketches (evaluation only), as CoOp's reader of the same name."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.common import DatasetLayout, Requirement, reject_options
from dapt_lightning.data.datasets.imagenet import CLASSNAMES_URL
from dapt_lightning.data.datasets.imagenet_variants import read_wnid_folders
from dapt_lightning.data.registry import register_dataset
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
        Requirement("imagenet-sketch/classnames.txt", "file", "copy imagenet/classnames.txt (" + CLASSNAMES_URL + ")"),
    ),
)


@register_dataset("imagenet_sketch")
def read_imagenet_sketch(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/imagenet-sketch/images`` (test split only; labels over its sorted class folders)."""
    reject_options(LAYOUT.name, options)
    return read_wnid_folders(LAYOUT, Path(root), "images", ())
