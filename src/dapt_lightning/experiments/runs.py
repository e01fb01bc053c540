"""One experiment run on disk: its folder, its last checkpoint, and the ``metrics.json`` that marks it finished.

``dapt fit/test --run.dir DIR`` (``experiments/lightning_cli.py``) puts everything of a run under DIR (W&B files,
``checkpoints/last.ckpt``, figures, per-class accuracy) and writes ``DIR/metrics.json`` atomically when the run's
evaluation is done. ``dapt sweep`` builds on this: a run whose ``metrics.json`` exists is finished; one with only
``last.ckpt`` resumes from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dapt_lightning.storage import atomic_write_bytes

METRICS_FILE = "metrics.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
METRICS_FORMAT = 1


@dataclass
class RunOptions:
    """Where a run's outputs go and what it evaluates (``--run.*``)."""

    dir: str | None = None
    """Run folder: W&B files, ``checkpoints/last.ckpt`` (saved every epoch), figures and ``metrics.json``."""
    test_after_fit: bool = False
    """After ``dapt fit``, evaluate the last epoch's model on the test set (the official protocol)."""
    label: str | None = None
    """Name of the method in result tables (a sweep's variant name, e.g. ``dapt_no_inter``); None: the method."""


def last_checkpoint(run_dir: str | Path) -> Path:
    """Where a run folder keeps its resumable checkpoint."""
    return Path(run_dir) / LAST_CHECKPOINT


def _number(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    return value


def metric_values(metrics: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The logged scalars whose names start with one of ``prefixes``, as plain Python numbers."""
    return {k: _number(v) for k, v in sorted(metrics.items()) if k.startswith(prefixes) and "/" in k}


def write_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON atomically (floats at full precision: ``json`` writes their shortest exact repr)."""
    record = {"format": METRICS_FORMAT, **record}
    atomic_write_bytes(Path(path), (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A run's ``metrics.json``."""
    with open(path) as handle:
        return json.load(handle)


def run_record(
    kind: str,
    module: Any,
    datamodule: Any,
    *,
    label: str | None,
    trained_on: dict[str, Any] | None,
    ckpt_path: str | None,
    test_metrics: dict[str, Any],
    fit_metrics: dict[str, Any],
    epochs: int,
    elapsed_s: float,
    settings: str,
) -> dict[str, Any]:
    """The ``metrics.json`` record of a finished ``fit`` or ``test``: what ran, on what, and what it measured.

    Args:
        kind: ``fit`` or ``test``.
        module, datamodule: the run's DAPTModule and DAPTDataModule.
        label: the method's name in result tables (a sweep variant); None: the method.
        trained_on: the DataModule settings the prompts were trained with (None: untrained, zero-shot).
        ckpt_path: the evaluated checkpoint (``test`` only).
        test_metrics, fit_metrics: the logged ``test/*`` and ``train/*``, ``val/*`` scalars.
        epochs: epochs run. elapsed_s: wall time of the run.
        settings: the resolved configuration as YAML.
    """
    return {
        "kind": kind,
        "dataset": datamodule.dataset_name,
        "method": module.hparams.method,
        "label": label or module.hparams.method,
        "shots": datamodule.num_shots,
        "seed": datamodule.seed,
        "subsample": datamodule.hparams.subsample,
        "num_classes": len(datamodule.classnames),
        "trained_on": None
        if trained_on is None
        else {k: trained_on.get(k) for k in ("dataset", "num_shots", "seed", "subsample")},
        "ckpt_path": str(ckpt_path) if kind == "test" and ckpt_path else None,
        "test": test_metrics,
        "fit": fit_metrics,
        "epochs": epochs,
        "elapsed_s": elapsed_s,
        "clip": module.clip_identity.to_dict(),
        "settings": yaml.safe_load(settings),
    }
