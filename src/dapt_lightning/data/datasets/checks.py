"""What a dataset on disk must have: its required files, no options for built-in readers, and the error that names
a malformed file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dapt_lightning.data.records import DatasetLayout


class DatasetError(ValueError):
    """A dataset on disk is malformed (bad split JSON, unknown class in an annotation file, bad options)."""


def missing_hint(name: str, root: Path) -> str:
    """The standard 'what to do' sentence appended to every missing-file error."""
    return (
        f"run `dapt data check --root {root}` to see everything missing, or `dapt data download {name} --root {root}`"
    )


def require(layout: DatasetLayout, root: Path, *paths: str) -> None:
    """Raise ``FileNotFoundError`` naming the dataset, the exact path and what to do, if a path is missing.

    Args:
        layout: The dataset's layout; its requirements supply the per-path hint.
        root: The data root.
        *paths: Paths relative to the data root; default: every requirement of the layout that is not made
            unnecessary by its ``unless`` paths.
    """
    hints = {req.path: req.hint for req in layout.requirements}
    if not paths:
        paths = tuple(
            req.path
            for req in layout.requirements
            if not (req.unless and all((root / alt).exists() for alt in req.unless))
        )
    for rel in paths:
        full = root / rel
        if not full.exists():
            hint = hints.get(rel, "")
            raise FileNotFoundError(
                f"dataset {layout.name!r}: expected {full} but it does not exist"
                + (f" ({hint})" if hint else "")
                + f"; {missing_hint(layout.name, root)}"
            )


def reject_options(name: str, options: Mapping[str, object]) -> None:
    """Built-in readers take no options; say so, naming the setting, instead of ignoring them."""
    if options:
        raise DatasetError(
            f"--data.dataset_options: dataset {name!r} takes no options, got {dict(options)!r}; "
            "only the 'custom' dataset is configurable"
        )
