"""Atomic writes and keyed safetensors caches: a kill mid-write leaves the previous file intact."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

CACHE_ENV = "DAPT_CACHE_DIR"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""The errors of a write that found no room: a full disk, a quota, a file-size limit."""


class DiskFullError(OSError):
    """A write that found no room; the message says where and what to do."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a write that found no room."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:  # a re-raised cause can point back at its effect
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def disk_full_message(folder: str | os.PathLike[str], written: str | None = None) -> str:
    """What to say when a run's folder has no room left: where, and the two ways out."""
    what = f" (writing {written})" if written else ""
    return (
        f"the disk holding {folder} is full{what}. Files written before are intact; free space on that disk, or give "
        "the run a folder on another one (--run.dir DIR, or --run.root DIR for every run), then resume a fit with "
        "--ckpt_path last"
    )


def default_cache_dir() -> Path:
    """``$DAPT_CACHE_DIR``, else ``~/.cache/dapt_lightning``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dapt_lightning").expanduser()


def stable_hash(value: Any) -> str:
    """SHA-256 of a JSON-serialisable value (keys sorted), as hex."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def ensure_writable_dir(path: str | os.PathLike[str], setting: str) -> Path:
    """Create ``path`` if needed and prove it writable, or raise an error that names ``setting``."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise PermissionError(
            f"{setting}: cannot write to {folder} ({error.strerror or error}). Choose a folder you can write to, "
            f"e.g. {setting} runs/"
        ) from error
    return folder


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], key: str) -> None:
    """Atomically save ``tensors`` as safetensors with the cache ``key`` and a content hash in the metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = save(tensors, metadata={"key": key, "content_sha256": _content_hash(tensors)})
    atomic_write_bytes(path, data)


def load_tensors(path: Path, key: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """``(tensors, "")`` for a valid cache entry with this ``key``, else ``(None, reason)``."""
    if not path.exists():
        return None, "no cache file"
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        return None, f"unreadable cache file {path} ({error})"
    if metadata.get("key") != key:
        return None, f"stale cache file {path} (made for other settings)"
    if metadata.get("content_sha256") != _content_hash(tensors):
        return None, f"corrupt cache file {path} (content hash mismatch)"
    return tensors, ""


def _content_hash(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].float().numpy().tobytes())
    return digest.hexdigest()
