"""Procedural images of coloured shapes, photographed plainly or through a colour filter.

The demo dataset and the tiny CLIP's pre-training data are drawn here. Every image is a pure function of its
integers (class, index, seed), so both are reproducible on any machine.

The filter is the demo's domain shift: through it, warm colours take the next warm colour's look (a red shape looks
orange, an orange one yellow, a yellow one red) and cool colours look as they are. A filtered image looks exactly
like a plain photo of another class, so only a caption that names the filter can tell them apart: the tiny CLIP
learns the filter from such captions in pre-training, and a prompt that does not name it reads warm colours wrongly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
}
Style = Literal["photo", "filtered"]


@dataclass(frozen=True)
class StyleRecord:
    """A way of seeing a shape: the caption templates that name it (``{}`` is the class name) and which colour each
    colour looks like (a colour it does not list looks as it is)."""

    name: str
    captions: tuple[str, ...]
    looks_like: dict[str, str] = field(default_factory=dict)

    def appearance(self, colour: str) -> str:
        """The colour a ``colour`` shape shows in this style."""
        return self.looks_like.get(colour, colour)


# Many wordings, with the class name and the filter at many positions, so that the text tower learns the word
# "filter" anywhere before or after a class name rather than a few fixed sentences: learned context can then reach
# it. Only plain photos are captioned without naming the filter, as the zero-shot prompt "a photo of a {}." does.
STYLES: dict[str, StyleRecord] = {
    record.name: record
    for record in (
        StyleRecord(
            "photo",
            (
                "a photo of a {}.",
                "a picture of a {}.",
                "a {}.",
                "the {}.",
                "{}.",
                "an image of a {}.",
                "a photo of the {}.",
                "a good photo of a {}.",
                "a close photo of the {}.",
                "this is a {}.",
            ),
        ),
        StyleRecord(
            "filtered",
            (
                "a filtered photo of a {}.",
                "a filtered picture of a {}.",
                "a filtered {}.",
                "the filtered {}.",
                "filtered {}.",
                "filtered photo of a {}.",
                "a filtered photo of the {}.",
                "a photo of a filtered {}.",
                "a {} through a filter.",
                "a photo of a {} through a filter.",
                "through a filter, a {}.",
                "this is a filtered {}.",
            ),
            {"red": "orange", "orange": "yellow", "yellow": "red"},
        ),
    )
}


def class_names() -> list[str]:
    """Every ``"<colour> <shape>"`` class, colour-major."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        points = [(x * r * 0.8, y * r * 0.8) for x, y in corners]
    elif shape == "diamond":
        points = [(0, -r), (r * 0.7, 0), (0, r), (-r * 0.7, 0)]
    elif shape == "triangle":
        points = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "star":
        points = [
            (
                (r if k % 2 == 0 else r * 0.42) * math.cos(-math.pi / 2 + k * math.pi / 5),
                (r if k % 2 == 0 else r * 0.42) * math.sin(-math.pi / 2 + k * math.pi / 5),
            )
            for k in range(10)
        ]
    elif shape == "cross":
        w = r * 0.35
        points = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def render(colour: str, shape: str, rng: random.Random, size: int = 64, style: Style = "photo") -> Image.Image:
    """Draw one ``colour`` ``shape`` on a light grey background as seen in ``style`` (see :data:`STYLES`); its
    position, size, angle, shade and the background's grey are drawn from ``rng``."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    grey = rng.randint(200, 255)
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.26, 0.4) * size
    cx, cy = (size / 2 + rng.uniform(-0.12, 0.12) * size for _ in range(2))
    angle = rng.uniform(-0.25, 0.25)
    shown = STYLES[style].appearance(colour)
    fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLOURS[shown])
    if shape == "circle":
        r = radius * 0.85
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, radius, angle), fill=fill)
    return image
