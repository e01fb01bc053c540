"""One experiment run on disk: where its folder is, and whether a command may start there.

``dapt fit/test --run.dir DIR`` (``experiments/trainer_cli.py``) puts everything of a run under DIR (W&B files,
``checkpoints/last.ckpt``, figures, per-class accuracy), and ``DIR/metrics.json`` (``callbacks/run_files.py``) is
written atomically when the run's evaluation is done. ``dapt sweep`` builds on this: a run whose ``metrics.json``
exists is finished; one with only ``last.ckpt`` resumes from it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from dapt_lightning.callbacks.run_files import METRICS_FILE

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


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
    name: str | None = None
    """The W&B run's name; None: ``<dataset>-<method>-<shots>shots-seed<seed>``."""
    group: str | None = None
    """The W&B run's group; None: the name without the seed, so that seeds aggregate."""


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
