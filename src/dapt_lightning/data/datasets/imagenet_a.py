"""ImageNet-A: 200 classes of natural adversarial examples (evaluation only), as CoOp's reader of the same name."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.common import DatasetLayout, Requirement, reject_options
from dapt_lightning.data.datasets.imagenet import CLASSNAMES_URL
from dapt_lightning.data.datasets.imagenet_variants import IGNORED, read_wnid_folders
from dapt_lightning.data.registry import register_dataset
from dapt_lightning.data.types import DatasetSplits

LAYOUT = DatasetLayout(
    name="imagenet_a",
    folder="imagenet-adversarial",
    requirements=(
        Requirement(
            "imagenet-adversarial/imagenet-a",
            "dir",
            "imagenet-a.tar from https://github.com/hendrycks/natural-adv-examples",
        ),
        Requirement(
            "imagenet-adversarial/classnames.txt", "file", "copy imagenet/classnames.txt (" + CLASSNAMES_URL + ")"
        ),
    ),
)


@register_dataset("imagenet_a")
def read_imagenet_a(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/imagenet-adversarial/imagenet-a`` (test split only; labels over its sorted class folders)."""
    reject_options(LAYOUT.name, options)
    return read_wnid_folders(LAYOUT, Path(root), "imagenet-a", IGNORED)
