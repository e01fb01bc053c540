"""Oxford Flowers 102, as CoOp's ``OxfordFlowers`` reader."""

from __future__ import annotations

import os
import random
from pathlib import Path

from dapt_lightning.data.datasets.checks import DatasetError, reject_options
from dapt_lightning.data.datasets.files import load_json
from dapt_lightning.data.datasets.generated_splits import SPLIT_SEED, read_or_generate_split
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
from dapt_lightning.data.types import DatasetSplits, Datum

_SPLIT = Resource(
    "split_zhou_OxfordFlowers.json",
    drive_id="1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT",
    dest="oxford_flowers/split_zhou_OxfordFlowers.json",
)

LAYOUT = DatasetLayout(
    name="oxford_flowers",
    folder="oxford_flowers",
    requirements=(
        Requirement(
            "oxford_flowers/jpg", "dir", "102flowers.tgz from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
        ),
        Requirement(
            _SPLIT.dest,
            "file",
            _SPLIT.page_url(),
            unless=("oxford_flowers/imagelabels.mat", "oxford_flowers/cat_to_name.json"),
        ),
    ),
    split_file=_SPLIT.dest,
    image_dir="oxford_flowers/jpg",
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (
        Resource(
            "102flowers.tgz",
            "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
            "oxford_flowers",
            extract=True,
            md5="52808999861908f626f3c1f4e79d11fa",
        ),
        Resource(
            "imagelabels.mat",
            "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
            "oxford_flowers/imagelabels.mat",
            md5="e0620be6f572b9609742df49c70aed4d",
        ),
        Resource(
            "cat_to_name.json", drive_id="1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0", dest="oxford_flowers/cat_to_name.json"
        ),
        _SPLIT,
    ),
)


def _generate(dataset_dir: Path) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Split ``imagelabels.mat`` 50/20/30 per class, classes in order of first appearance (official ``read_data``)."""
    from scipy.io import loadmat  # imported here: scipy is only needed when the split file is absent

    rng = random.Random(SPLIT_SEED)
    image_dir = os.path.join(str(dataset_dir), "jpg")
    tracker: dict[int, list[str]] = {}
    for i, label in enumerate(loadmat(str(dataset_dir / "imagelabels.mat"))["labels"][0]):
        tracker.setdefault(int(label), []).append(os.path.join(image_dir, f"image_{i + 1:05d}.jpg"))
    lab2cname = load_json(dataset_dir / "cat_to_name.json", "class-name file")
    train: list[Datum] = []
    val: list[Datum] = []
    test: list[Datum] = []
    for label, impaths in tracker.items():
        rng.shuffle(impaths)
        n_total = len(impaths)
        n_train, n_val = round(n_total * 0.5), round(n_total * 0.2)
        if not (n_train > 0 and n_val > 0 and n_total - n_train - n_val > 0):
            raise DatasetError(f"oxford_flowers: class {label} has {n_total} images, too few to split")
        if str(label) not in lab2cname:
            raise DatasetError(f"{dataset_dir / 'cat_to_name.json'} has no name for class {label}")
        cname = lab2cname[str(label)]
        train += [Datum(im, label - 1, cname) for im in impaths[:n_train]]
        val += [Datum(im, label - 1, cname) for im in impaths[n_train : n_train + n_val]]
        test += [Datum(im, label - 1, cname) for im in impaths[n_train + n_val :]]
    return train, val, test


def read_oxford_flowers(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/oxford_flowers`` from its split file (or split ``imagelabels.mat`` 50/20/30 if absent)."""
    reject_options(LAYOUT.name, options)
    root = Path(root)
    train, val, test = read_or_generate_split(LAYOUT, root, lambda: _generate(root / "oxford_flowers"))
    return DatasetSplits(LAYOUT.name, train, val, test)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_oxford_flowers,
    layout=LAYOUT,
    download=DOWNLOAD,
    template="a photo of a {}, a type of flower.",
    benchmark="fewshot",
    config="flowers102.yaml",
)
