"""ImageNet-A: 200 classes of natural adversarial examples (evaluation only), as CoOp's reader of the same name."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.checks import reject_options
from dapt_lightning.data.datasets.imagenet import classnames_requirement, classnames_resource
from dapt_lightning.data.datasets.imagenet_variants import IGNORED, read_wnid_folders
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
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
        classnames_requirement("imagenet-adversarial"),
    ),
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (
        Resource(
            "imagenet-a.tar",
            "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
            "imagenet-adversarial",
            extract=True,
        ),
        classnames_resource("imagenet-adversarial"),
    ),
)


def read_imagenet_a(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/imagenet-adversarial/imagenet-a`` (test split only; labels over its sorted class folders)."""
    reject_options(LAYOUT.name, options)
    return read_wnid_folders(LAYOUT, Path(root), "imagenet-a", IGNORED)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_imagenet_a,
    layout=LAYOUT,
    download=DOWNLOAD,
    benchmark="domain_shift",
    config="imagenet_a.yaml",
    max_epochs=50,
)
