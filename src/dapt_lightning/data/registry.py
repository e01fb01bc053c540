"""The dataset registry: one :class:`DatasetRecord` per dataset, and every per-dataset table derived from them.

Each built-in dataset module declares its ``RECORD`` (reader, layout, download plan, template, benchmark, config);
this module registers them, in CoOp's order, and answers every question about a dataset from its record, so that
adding a dataset means writing one module and adding it to the list below. Users register their own datasets
with :func:`register_dataset`.
"""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets import (
    caltech101,
    custom,
    dtd,
    eurosat,
    fgvc_aircraft,
    food101,
    imagenet,
    imagenet_a,
    imagenet_r,
    imagenet_sketch,
    imagenetv2,
    oxford_flowers,
    oxford_pets,
    stanford_cars,
    sun397,
    synthetic,
    ucf101,
)
from dapt_lightning.data.records import DatasetLayout, DatasetReader, DatasetRecord, DownloadPlan
from dapt_lightning.model.prompted_clip import GENERIC_TEMPLATE

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
"""The repository's ``configs/`` folder, where a record's ``config`` file lives."""

BENCHMARKS = ("fewshot", "domain_shift")
"""The values of ``DatasetRecord.benchmark`` besides ``None``."""

_DATASETS: dict[str, DatasetRecord] = {}


def register_dataset(record: DatasetRecord) -> DatasetRecord:
    """Register ``record`` under ``record.name`` (the ``--data.dataset`` value) and return it.

    Raises:
        ValueError: the name is taken, the record's layout or download plan names another dataset, or its
            ``benchmark`` is not one of :data:`BENCHMARKS`.
    """
    if record.name in _DATASETS:
        raise ValueError(f"dataset {record.name!r} is already registered; give your DatasetRecord another name")
    for part in (record.layout, record.download):
        if part is not None and part.name != record.name:
            raise ValueError(
                f"dataset {record.name!r}: its {type(part).__name__} is named {part.name!r}; use the record's name"
            )
    if record.benchmark is not None and record.benchmark not in BENCHMARKS:
        raise ValueError(
            f"dataset {record.name!r}: benchmark {record.benchmark!r} is not one of {', '.join(BENCHMARKS)} or None"
        )
    _DATASETS[record.name] = record
    return record


# CoOp's order (the papers' tables follow it), then the datasets that are not benchmarks.
for _module in (
    imagenet,
    caltech101,
    oxford_pets,
    stanford_cars,
    oxford_flowers,
    food101,
    fgvc_aircraft,
    sun397,
    dtd,
    eurosat,
    ucf101,
    imagenetv2,
    imagenet_sketch,
    imagenet_a,
    imagenet_r,
    custom,
    synthetic,
):
    register_dataset(_module.RECORD)


def list_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    return sorted(_DATASETS)


def get_dataset(name: str) -> DatasetRecord:
    """The record registered as ``name``, or a clear error listing the known names."""
    if name not in _DATASETS:
        raise ValueError(f"--data.dataset: unknown dataset {name!r}; choose one of {', '.join(list_datasets())}")
    return _DATASETS[name]


def get_dataset_reader(name: str) -> DatasetReader:
    """The reader of dataset ``name`` (``reader(root, **options)``); see :func:`get_dataset`."""
    return get_dataset(name).reader


def layouts() -> dict[str, DatasetLayout]:
    """The on-disk layout of every dataset that has one (the benchmarks), in registry order: ``dapt data check``."""
    return {name: record.layout for name, record in _DATASETS.items() if record.layout is not None}


def download_plans() -> dict[str, DownloadPlan]:
    """What ``dapt data download NAME`` fetches, for every dataset that has a plan, in registry order."""
    return {name: record.download for name, record in _DATASETS.items() if record.download is not None}


def dataset_template(name: str) -> str:
    """The zero-shot template of dataset ``name`` (``{}`` is the class name); the generic one for unknown names."""
    record = _DATASETS.get(name)
    return record.template if record is not None else GENERIC_TEMPLATE


def dataset_max_epochs(name: str) -> int | None:
    """The fixed epoch count of the official protocol for ``name``; ``None`` when unregistered or set by shots."""
    record = _DATASETS.get(name)
    return record.max_epochs if record is not None else None


def benchmark_datasets(benchmark: str) -> tuple[str, ...]:
    """Names of the datasets of ``benchmark`` (``"fewshot"`` or ``"domain_shift"``), in registry order."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    return tuple(name for name, record in _DATASETS.items() if record.benchmark == benchmark)


def config_path(name: str) -> Path | None:
    """The absolute path of dataset ``name``'s config under :data:`CONFIG_DIR`, or ``None`` when it has none."""
    config = get_dataset(name).config
    return CONFIG_DIR / config if config is not None else None
