"""Checkpoint I/O that never unpickles arbitrary objects and never leaves a half-written file."""

from __future__ import annotations

import errno
import io
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dapt_lightning.cache import atomic_write_bytes


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds objects that ``torch.load(weights_only=True)`` refuses to build."""


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` and errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check --ckpt_path (or use `--ckpt_path last`)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"refusing to load checkpoint {path}: it contains objects other than tensors and plain Python values "
            f"({str(error).splitlines()[0]}). dapt_lightning never unpickles arbitrary code; only load checkpoints "
            "you trust, and re-save them as plain state dicts."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {error})") from error


class SafeCheckpointIO(TorchCheckpointIO):
    """Saves atomically (temporary file, fsync, rename) and loads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            atomic_write_bytes(Path(path), buffer.getvalue())
        except OSError as error:
            reason = "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else str(error)
            raise OSError(
                error.errno,
                f"could not write checkpoint {path}: {reason}. The previous checkpoint there (if any) is intact; "
                "free space or point --trainer.default_root_dir elsewhere, then resume with --ckpt_path last",
            ) from error

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location if map_location is not None else "cpu")
