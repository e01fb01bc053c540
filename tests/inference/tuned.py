"""Reading the demo data a tuned model is tried on."""

from __future__ import annotations

from pathlib import Path


def demo_test_images(run: Path) -> list[Path]:
    """The demo data's test images (the folder of each names its class: ``red_circle/test_003.jpg``)."""
    images = sorted((run.parents[3] / "data" / "synthetic" / "images").glob("*/test_*"))
    assert len(images) == 24 * 24
    return images


def true_class(image: Path) -> str:
    """The class an image of the demo data shows (its folder's name)."""
    return image.parent.name.replace("_", " ")
