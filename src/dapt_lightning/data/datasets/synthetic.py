"""A procedural dataset written to disk as real image files in the CoOp ``split_zhou`` JSON layout.

``ROOT/synthetic/images/<class>/<split>_<n>.{jpg,png}`` plus ``ROOT/synthetic/split_zhou_Synthetic.json``.
The demo trains on it; the reader writes it on first use, so it needs no download.
"""

from __future__ import annotations

import random
from pathlib import Path

from dapt_lightning.data.datasets.common import read_split, reject_options, write_json_atomic
from dapt_lightning.data.records import DatasetRecord
from dapt_lightning.data.synthetic_render import COLOURS, SHAPES, Style, render
from dapt_lightning.data.types import DatasetSplits

FOLDER = "synthetic"
SPLIT_FILE = "split_zhou_Synthetic.json"
SPLIT_SIZES = {"train": 24, "val": 8, "test": 24}


def write_synthetic_dataset(
    folder: Path, seed: int = 0, image_size: int = 64, style: Style = "tinted", sizes: dict[str, int] | None = None
) -> Path:
    """Write every class's images and the split JSON under ``folder``; returns the split file's path."""
    sizes = sizes or SPLIT_SIZES
    split: dict[str, list[list[object]]] = {name: [] for name in sizes}
    for label, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        classname = f"{colour} {shape}"
        class_dir = folder / "images" / classname.replace(" ", "_")
        class_dir.mkdir(parents=True, exist_ok=True)
        for split_name, count in sizes.items():
            for index in range(count):
                rng = random.Random(f"{seed}-{label}-{split_name}-{index}")
                # Mix JPEG and PNG so decoding of both formats is exercised.
                suffix = "png" if index % 4 == 3 else "jpg"
                relpath = f"images/{class_dir.name}/{split_name}_{index:03d}.{suffix}"
                render(colour, shape, rng, image_size, style).save(folder / relpath, quality=92)
                split[split_name].append([relpath, label, classname])
    split_path = folder / SPLIT_FILE
    write_json_atomic(split, split_path)
    return split_path


def read_synthetic(root: Path, **options: object) -> DatasetSplits:
    """Read (writing it first if absent) the synthetic shapes-and-colours dataset under ``root``."""
    reject_options(FOLDER, options)
    folder = Path(root) / FOLDER
    split_path = folder / SPLIT_FILE
    if not split_path.exists():
        write_synthetic_dataset(folder)
    train, val, test = read_split(split_path, folder)
    return DatasetSplits(FOLDER, train, val, test)


RECORD = DatasetRecord(name=FOLDER, reader=read_synthetic, config="demo.yaml")
