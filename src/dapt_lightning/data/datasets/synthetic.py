"""A procedural dataset written to disk as real image files in the CoOp ``split_zhou`` JSON layout.

``ROOT/synthetic/images/<class>/<split>_<n>.{jpg,png}`` plus ``ROOT/synthetic/split_zhou_Synthetic.json``.
The demo trains on it; the reader writes it on first use, so it needs no download. Every image is seen through
the colour filter (:data:`DEMO_STYLE`), which the tiny CLIP learned from pre-training captions that name it, but
which the zero-shot prompt (``"a photo of a {}."``) does not name: a domain that learned prompts can adapt to.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from dapt_lightning.data.datasets.checks import reject_options
from dapt_lightning.data.datasets.split_files import read_split, write_json_atomic
from dapt_lightning.data.records import DatasetRecord
from dapt_lightning.data.synthetic_render import COLOURS, SHAPES, Style, render
from dapt_lightning.data.types import DatasetSplits

FOLDER = "synthetic"
SPLIT_FILE = "split_zhou_Synthetic.json"
SPLIT_SIZES = {"train": 24, "val": 8, "test": 24}
DEMO_STYLE: Style = "filtered"
"""The style of every image of the dataset (see ``synthetic_render.STYLES``)."""
RENDERING_FILE = "rendering.json"
RENDERING_VERSION = 3
"""Bumped whenever the images change: a folder written by another version is written again on first use."""


def write_synthetic_dataset(
    folder: Path, seed: int = 0, image_size: int = 64, style: Style = DEMO_STYLE, sizes: dict[str, int] | None = None
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
    rendering = {"version": RENDERING_VERSION, "style": style, "seed": seed, "image_size": image_size, "sizes": sizes}
    write_json_atomic(rendering, folder / RENDERING_FILE)
    split_path = folder / SPLIT_FILE
    write_json_atomic(split, split_path)  # last: its presence marks a complete dataset
    return split_path


def needs_writing(folder: Path) -> bool:
    """Whether ``folder`` lacks the dataset, or holds one an older renderer wrote (its images differ from today's).

    A split file without images is left alone, for :func:`read_split` to judge.
    """
    if not (folder / SPLIT_FILE).is_file():
        return True
    try:
        rendering = json.loads((folder / RENDERING_FILE).read_text())
    except FileNotFoundError:
        return (folder / "images").is_dir()  # written before renderings were versioned
    except (OSError, ValueError):
        return True
    return not isinstance(rendering, dict) or rendering.get("version") != RENDERING_VERSION


def prepare_synthetic(root: Path, **options: object) -> None:
    """Write the synthetic dataset under ``root`` if it is absent or an older renderer wrote it."""
    reject_options(FOLDER, options)
    folder = Path(root) / FOLDER
    if needs_writing(folder):
        write_synthetic_dataset(folder)


def read_synthetic(root: Path, **options: object) -> DatasetSplits:
    """Read the synthetic dataset under ``root`` (written by :func:`prepare_synthetic`)."""
    reject_options(FOLDER, options)
    folder = Path(root) / FOLDER
    train, val, test = read_split(folder / SPLIT_FILE, folder)
    return DatasetSplits(FOLDER, train, val, test)


RECORD = DatasetRecord(name=FOLDER, reader=read_synthetic, config="demo.yaml", prepare=prepare_synthetic)
