"""One experiment run on disk: its folder, its last checkpoint, and the ``metrics.json`` that marks it finished.

``dapt fit/test --run.dir DIR`` (``experiments/lightning_cli.py``) puts everything of a run under DIR (W&B files,
``checkpoints/last.ckpt``, figures, per-class accuracy) and writes ``DIR/metrics.json`` atomically when the run's
evaluation is done. ``dapt sweep`` builds on this: a run whose ``metrics.json`` exists is finished; one with only
``last.ckpt`` resumes from it.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dapt_lightning.storage import atomic_write_bytes

METRICS_FILE = "metrics.json"
RUN_LOG = "run.log"
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
    root: str = "runs"
    """Where run folders go when ``dir`` is not given: ``ROOT/<dataset>/<method>/<shots>shots/seed<seed>/``."""
    overwrite: bool = False
    """Start again in a run folder that already holds a run (its checkpoints and ``metrics.json`` are replaced)."""


class RunFolderError(ValueError):
    """A run folder already holds a run that this command would overwrite."""


def run_folder(root: str | Path, dataset: str, label: str, shots: int, seed: int, subsample: str = "all") -> Path:
    """The folder of one run: ``ROOT/<dataset>/<label>/<shots>shots[-<subsample>]/seed<seed>/``."""
    shots_part = f"{shots}shots" if subsample == "all" else f"{shots}shots-{subsample}"
    return Path(root) / dataset / label / shots_part / f"seed{seed}"


def evaluation_folder(parent: str | Path, subcommand: str, dataset: str, subsample: str = "all") -> Path:
    """Where ``dapt test/validate/predict`` of a trained run keeps its outputs: inside that run's folder."""
    name = dataset if subsample == "all" else f"{dataset}-{subsample}"
    return Path(parent) / subcommand / name


def run_folder_of_checkpoint(ckpt_path: str | Path) -> Path | None:
    """The run folder a checkpoint lives in (``<run>/checkpoints/<file>.ckpt``), or None."""
    path = Path(ckpt_path)
    return path.parent.parent if path.parent.name == LAST_CHECKPOINT.parent.name else None


def check_run_folder(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse to start a run where one already is, saying how to go on; with ``overwrite``, clear the old one.

    Args:
        run_dir: the run's folder.
        resuming: the command resumes from a checkpoint (``--ckpt_path``).
        overwrite: ``--run.overwrite``: replace the folder's checkpoints and ``metrics.json``.
    """
    finished = (run_dir / METRICS_FILE).is_file()
    unfinished = not finished and last_checkpoint(run_dir).is_file() and not resuming
    if overwrite:
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
        if not resuming:
            shutil.rmtree(run_dir / LAST_CHECKPOINT.parent, ignore_errors=True)
        return
    if finished:
        raise RunFolderError(
            f"{run_dir} holds a finished run ({METRICS_FILE} is there): nothing to do. To run again, choose another "
            "folder (--run.dir DIR, another --seed_everything) or replace it with --run.overwrite true"
        )
    if unfinished:
        raise RunFolderError(
            f"{run_dir} holds an unfinished run ({LAST_CHECKPOINT}, no {METRICS_FILE}): resume it by adding "
            "--ckpt_path last, or start again with --run.overwrite true"
        )


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
