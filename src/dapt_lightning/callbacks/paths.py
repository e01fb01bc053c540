"""Where callbacks write their files."""

from __future__ import annotations

from pathlib import Path

import lightning as L


def output_folder(trainer: L.Trainer) -> Path:
    """The run's log folder (or ``default_root_dir``).

    Call it on every rank, never inside a rank-zero-only function: under DDP ``trainer.log_dir`` broadcasts.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)
