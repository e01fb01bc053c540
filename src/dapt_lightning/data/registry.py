"""Dataset registry: a dict plus a decorator, as in timm's model registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dapt_lightning.data.types import DatasetSplits

DatasetReader = Callable[[Path], DatasetSplits]
"""A reader takes the data root (the folder that holds every dataset's folder) and returns the full splits."""

_DATASETS: dict[str, DatasetReader] = {}


def register_dataset(name: str) -> Callable[[DatasetReader], DatasetReader]:
    """Register ``reader`` under ``name`` (lower case, as used in configs: ``--data.dataset oxford_pets``)."""

    def decorator(reader: DatasetReader) -> DatasetReader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = reader
        return reader

    return decorator


def list_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    _import_builtin_readers()
    return sorted(_DATASETS)


def get_dataset_reader(name: str) -> DatasetReader:
    """The reader registered as ``name``, or a clear error listing the known names."""
    _import_builtin_readers()
    if name not in _DATASETS:
        raise ValueError(f"--data.dataset: unknown dataset {name!r}; choose one of {', '.join(sorted(_DATASETS))}")
    return _DATASETS[name]


def _import_builtin_readers() -> None:
    # Importing the package runs every reader's @register_dataset; done lazily to avoid import cycles.
    import dapt_lightning.data.datasets  # noqa: F401
