"""ImageNet-1k, as CoOp's ``ImageNet`` reader: train folders for training, the ILSVRC val set as test (and val).

The val images must be sorted into one folder per class (``images/val/n01440764/...``), like the train images.
"""

from __future__ import annotations

import os
from pathlib import Path

from dapt_lightning.data.datasets.checks import DatasetError, reject_options, require
from dapt_lightning.data.datasets.files import listdir_nohidden, read_classnames_txt
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
from dapt_lightning.data.types import DatasetSplits, Datum


def classnames_resource(folder: str) -> Resource:
    """CLIP's ImageNet ``classnames.txt`` for ``ROOT/<folder>``: copied from ``ROOT/imagenet`` when there."""
    return Resource(
        "classnames.txt",
        drive_id="1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF",
        dest=f"{folder}/classnames.txt",
        copy_from="imagenet/classnames.txt",
    )


CLASSNAMES_URL = classnames_resource("imagenet").page_url()


def classnames_requirement(folder: str) -> Requirement:
    """The ``classnames.txt`` an ImageNet variant in ``ROOT/<folder>`` needs: a copy of ImageNet's."""
    return Requirement(f"{folder}/classnames.txt", "file", "copy imagenet/classnames.txt (" + CLASSNAMES_URL + ")")


_IMAGES = "ILSVRC2012 from https://image-net.org (needs an account), one folder per class"

LAYOUT = DatasetLayout(
    name="imagenet",
    folder="imagenet",
    requirements=(
        Requirement("imagenet/images/train", "dir", _IMAGES),
        Requirement("imagenet/images/val", "dir", _IMAGES + "; sort the val images into class folders"),
        Requirement("imagenet/classnames.txt", "file", CLASSNAMES_URL),
    ),
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (classnames_resource("imagenet"),),
    manual=(
        "ImageNet images need an account: download ILSVRC2012 train and val from https://image-net.org, "
        "extract them to ROOT/imagenet/images/train and ROOT/imagenet/images/val, with the val images sorted "
        "into one folder per class (n01440764/, ...) like train."
    ),
)


def classname_of(classnames: dict[str, str], folder: str, classnames_file: Path) -> str:
    """The class name of a wnid folder, or an error naming the classnames file."""
    if folder not in classnames:
        raise DatasetError(f"folder {folder!r} has no entry in {classnames_file}; is it the CLIP classnames.txt?")
    return classnames[folder]


def read_class_folders(split_dir: Path, classnames: dict[str, str], classnames_file: Path) -> list[Datum]:
    """Sorted class folders give the labels; each folder's files keep ``os.listdir`` order (as the official code).

    That unsorted order decides which images the few-shot sampler picks for a seed, on ImageNet as in the official
    code: the same disk gives the same images, another copy of ImageNet may not.
    """
    folders = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    items = []
    for label, folder in enumerate(folders):
        classname = classname_of(classnames, folder, classnames_file)
        class_dir = os.path.join(str(split_dir), folder)
        items += [Datum(os.path.join(class_dir, name), label, classname) for name in listdir_nohidden(Path(class_dir))]
    return items


def read_imagenet(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/imagenet``; ``val`` is the full test set, as in the official code (which never few-shots it)."""
    reject_options(LAYOUT.name, options)
    root = Path(root)
    require(LAYOUT, root)
    dataset_dir = root / "imagenet"
    classnames_file = dataset_dir / "classnames.txt"
    classnames = read_classnames_txt(classnames_file)
    train = read_class_folders(dataset_dir / "images/train", classnames, classnames_file)
    test = read_class_folders(dataset_dir / "images/val", classnames, classnames_file)
    # As the official reader: val is the whole ILSVRC val set (= test) and is never few-shot sampled.
    return DatasetSplits(LAYOUT.name, train, list(test), test, fewshot_val=False)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_imagenet,
    layout=LAYOUT,
    download=DOWNLOAD,
    benchmark="fewshot",
    config="imagenet.yaml",
    max_epochs=50,
)
