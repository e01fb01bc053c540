"""Procedural images of coloured shapes, for the demo dataset and for pre-training the tiny CLIP.

Every image is a pure function of its integers (class, index, seed), so the dataset and the tiny CLIP's
pre-training data are reproducible on any machine.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
}
Style = Literal["clean", "tinted", "cluttered"]


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


def render(colour: str, shape: str, rng: random.Random, size: int = 64, style: Style = "clean") -> Image.Image:
    """Draw one ``colour`` ``shape``: ``clean`` on light grey, ``tinted`` on a random colour, ``cluttered`` on a
    random colour with grey blobs and blur."""
    if style == "clean":
        grey = rng.randint(200, 255)
        background = (grey, grey, grey)
    else:
        background = tuple(rng.randint(60, 230) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    if style == "cluttered":
        for _ in range(rng.randint(4, 10)):  # faint grey blobs that are not part of the class
            x, y, s = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, size / 6)
            g = rng.randint(80, 200)
            draw.ellipse([x - s, y - s, x + s, y + s], fill=(g, g, g))
    radius = rng.uniform(0.22, 0.38) * size
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    jitter = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLOURS[colour])
    if shape == "circle":
        draw.ellipse([cx - radius * 0.85, cy - radius * 0.85, cx + radius * 0.85, cy + radius * 0.85], fill=jitter)
    else:
        draw.polygon(_polygon(shape, cx, cy, radius, rng.uniform(-0.4, 0.4)), fill=jitter)
    if style == "cluttered" and rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return image
