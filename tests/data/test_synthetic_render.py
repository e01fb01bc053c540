"""The demo's world: a filtered image is a plain photo of another colour, pixel for pixel, and the demo dataset is
every class seen through the filter."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny import SIZES

from dapt_lightning.data.datasets.synthetic import DEMO_STYLE, write_synthetic_dataset
from dapt_lightning.data.synthetic_render import COLOURS, SHAPES, STYLES, class_names, render


@pytest.mark.parametrize("colour", list(COLOURS))
def test_a_filtered_shape_looks_exactly_like_a_photo_of_the_colour_the_filter_shows(colour: str) -> None:
    shown = STYLES["filtered"].appearance(colour)
    for shape in SHAPES:
        filtered = render(colour, shape, random.Random(f"{colour}-{shape}"), style="filtered")
        photo = render(shown, shape, random.Random(f"{colour}-{shape}"), style="photo")
        assert np.array_equal(np.asarray(filtered), np.asarray(photo))


def test_the_filter_cycles_the_warm_colours_and_leaves_the_cool_ones() -> None:
    looks = {colour: STYLES["filtered"].appearance(colour) for colour in COLOURS}
    assert looks == {"red": "orange", "orange": "yellow", "yellow": "red"} | {
        colour: colour for colour in ("green", "blue", "purple")
    }
    assert sorted(looks.values()) == sorted(COLOURS)  # a permutation: no two classes look alike
    assert STYLES["photo"].captions[0] == "a photo of a {}."  # the zero-shot prompt names plain photos only
    assert all("filter" in caption for caption in STYLES["filtered"].captions)
    assert not any("filter" in caption for caption in STYLES["photo"].captions)


def test_the_demo_dataset_is_every_class_seen_through_the_filter(tmp_path: Path) -> None:
    assert DEMO_STYLE == "filtered"
    write_synthetic_dataset(tmp_path, sizes=SIZES)
    red_circle = np.asarray(Image.open(tmp_path / "images" / "red_circle" / "train_000.jpg"), dtype=float)
    centre = red_circle[24:40, 24:40].reshape(-1, 3).mean(axis=0)  # the shape's middle: orange, not red
    orange, red = np.array(COLOURS["orange"]), np.array(COLOURS["red"])
    assert np.linalg.norm(centre - orange) < 40 < np.linalg.norm(centre - red)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(n.replace(" ", "_") for n in class_names())
