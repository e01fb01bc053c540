"""ImageNetV2 matched-frequency, as CoOp's ``ImageNetV2`` reader (evaluation only).

Its class folders are named ``0`` ... ``999``: folder ``i`` is the ``i``-th line of ``classnames.txt``.
"""

from __future__ import annotations

import os
from pathlib import Path

from dapt_lightning.data.datasets.checks import reject_options, require
from dapt_lightning.data.datasets.files import listdir_nohidden, read_classnames_txt
from dapt_lightning.data.datasets.imagenet import classnames_requirement, classnames_resource
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
from dapt_lightning.data.types import DatasetSplits, Datum

IMAGE_FOLDER = "imagenetv2-matched-frequency-format-val"

LAYOUT = DatasetLayout(
    name="imagenetv2",
    folder="imagenetv2",
    requirements=(
        Requirement(
            f"imagenetv2/{IMAGE_FOLDER}",
            "dir",
            "imagenetv2-matched-frequency.tar.gz from https://github.com/modestyachts/ImageNetV2",
        ),
        classnames_requirement("imagenetv2"),
    ),
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (
        Resource(
            "imagenetv2-matched-frequency.tar.gz",
            "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz",
            "imagenetv2",
            extract=True,
        ),
        classnames_resource("imagenetv2"),
    ),
)


def read_imagenetv2(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/imagenetv2`` (test split only).

    The official reader loops over ``range(1000)``; we loop over the lines of ``classnames.txt`` (1000 for the
    real file), so that a smaller class list (the test fakes) works the same way.
    """
    reject_options(LAYOUT.name, options)
    root = Path(root)
    require(LAYOUT, root)
    dataset_dir = root / "imagenetv2"
    # A trailing blank line would parse as an empty entry; the official range(1000) never reaches it.
    classnames = [name for folder, name in read_classnames_txt(dataset_dir / "classnames.txt").items() if folder]
    items = []
    for label, classname in enumerate(classnames):
        class_dir = dataset_dir / IMAGE_FOLDER / str(label)
        require(LAYOUT, root, str(class_dir.relative_to(root)))
        items += [Datum(os.path.join(str(class_dir), name), label, classname) for name in listdir_nohidden(class_dir)]
    return DatasetSplits(LAYOUT.name, [], [], items, classnames)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_imagenetv2,
    layout=LAYOUT,
    download=DOWNLOAD,
    benchmark="domain_shift",
    config="imagenetv2.yaml",
    max_epochs=50,
)
