"""One experiment run on disk: where its folder is, and whether a command may start there.

``dapt fit/test --run.dir DIR`` (``experiments/trainer_cli.py``) puts everything of a run under DIR (W&B files,
``checkpoints/last.ckpt``, figures, per-class accuracy), and ``DIR/metrics.json`` (``callbacks/run_files.py``) is
written atomically when the run's evaluation is done. ``dapt sweep`` builds on this: a run whose ``metrics.json``
exists is finished; one with only ``last.ckpt`` resumes from it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapt_lightning.callbacks.run_files import METRICS_FILE
from dapt_lightning.experiments.checks import configured_method
from dapt_lightning.methods import ZeroShotCLIP

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
    """The folder of one run: ``ROOT/<dataset>/<label>/<shots>shots[-<subsample>]/seed<seed>/`` (``allshots`` for
    every training image)."""
    shots_part = "allshots" if shots == -1 else f"{shots}shots"  # -1: every training image
    shots_part = shots_part if subsample == "all" else f"{shots_part}-{subsample}"
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


def default_run_folder(config: Any, subcommand: str) -> Path:
    """Where a run goes without ``--run.dir``: its own folder (``fit``, zero-shot ``test``), or, for evaluating a
    checkpoint, a subfolder of the checkpoint's run folder (``<run>/test/<dataset>/``)."""
    data, options = config.data, config.run
    ckpt_path = config.get("ckpt_path")
    trained = run_folder_of_checkpoint(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None
    if data.get("images"):  # a user's own images: <run>/predict/images/, or ROOT/predict/images/ without a run
        return evaluation_folder(trained or Path(options.root), subcommand, "images")
    method = configured_method(config)
    label = options.get("label") or method.name or method.__name__.lower()
    zero_shot = issubclass(method, ZeroShotCLIP)
    shots = 0 if zero_shot else data.num_shots  # zero-shot CLIP uses no training image
    own = run_folder(options.root, data.dataset, label, shots, data.seed, data.subsample)
    if subcommand == "fit" or (zero_shot and not config.get("ckpt_path")):
        return own
    return evaluation_folder(trained or own, subcommand, data.dataset, data.subsample)


RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "SLURM_PROCID")
"""Where a process learns its place in a distributed run: Lightning's relaunched ranks (LOCAL_RANK, NODE_RANK), and
the processes a cluster launcher starts all at once (torchrun's RANK and GROUP_RANK, srun's SLURM_PROCID)."""


def is_first_process() -> bool:
    """False in every process of a distributed run but the first (global rank 0 of node 0)."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def point_outputs_at(config: Any, run_dir: Path, subcommand: str) -> None:
    """Send the trainer's files, the logger's and the last checkpoint into ``run_dir``."""
    config.trainer.default_root_dir = str(run_dir)
    logger = config.trainer.get("logger")
    if logger not in (None, False, True) and "save_dir" in (logger.get("init_args") or {}):
        logger.init_args.save_dir = str(run_dir)
    if config.get("checkpoint") is not None:
        # The CLI's ModelCheckpoint (save_last every epoch) writes into the run folder, where sweeps resume from.
        # An evaluation saves nothing: its callback keeps the trained run's folder, which it restores from.
        ckpt_path = config.get("ckpt_path")
        evaluated = subcommand != "fit" and ckpt_path and Path(ckpt_path).is_file()
        config.checkpoint.dirpath = str(Path(ckpt_path).parent if evaluated else run_dir / LAST_CHECKPOINT.parent)
