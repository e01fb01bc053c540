"""Who runs what: a run's ``RUNNING`` claim, its ``error.txt``, and the status ``dapt sweep --list`` shows.

A worker claims a run by creating ``RUNNING`` (pid, host, start time) in the run folder with ``os.link``, which
fails if the file exists, so two workers (processes, or jobs on hosts sharing the file system) never run the same
run. A claim whose process is gone (same host: the pid is dead or belongs to a newer process) is stale: it shows
as failed and the next worker takes the run over; on another host it cannot be checked, and shows as running.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapt_lightning.experiments.sweep.plan import Run
from dapt_lightning.storage import atomic_write_bytes

RUNNING_FILE = "RUNNING"
ERROR_FILE = "error.txt"
CLAIM_LOCK = ".claim.lock"
STATES = ("done", "running", "failed", "todo")


@dataclass(frozen=True)
class Status:
    """A run's state (one of :data:`STATES`) and what to know about it (who runs it, its error, ...)."""

    state: str
    detail: str = ""


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_record(pid: int | None = None) -> dict[str, Any]:
    """What a ``RUNNING`` marker says: pid (default: this process), host, time, and the process's start in ticks."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "host": socket.gethostname(), "started": time.time(), "process_start": _process_start(pid)}


def read_claim(run_dir: Path) -> dict[str, Any] | None:
    """The ``RUNNING`` marker of a run folder; None when there is none. An unreadable one reads as ``{}``."""
    try:
        text = (run_dir / RUNNING_FILE).read_text()
    except FileNotFoundError:
        return None
    try:
        claim = json.loads(text)
    except ValueError:
        return {}
    return claim if isinstance(claim, dict) else {}


def is_stale(claim: dict[str, Any]) -> bool:
    """True when the claiming process ran on this host and is gone (dead pid, or the pid now names another)."""
    if claim.get("host") != socket.gethostname() or not isinstance(claim.get("pid"), int):
        return False
    if not _alive(claim["pid"]):
        return True
    started = claim.get("process_start")
    now = _process_start(claim["pid"])
    return started is not None and now is not None and started != now


def _describe(claim: dict[str, Any]) -> str:
    if not claim:
        return f"unreadable {RUNNING_FILE} marker; delete it if no worker runs this"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(claim.get("started", 0)))
    return f"pid {claim.get('pid')} on {claim.get('host')} since {started}"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Serialises claim decisions on this host, so two workers cannot both take over the same stale claim.
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists; atomic, and never visible half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    atomic_write_bytes(tmp, data)
    try:
        os.link(tmp, path)  # fails if ``path`` exists, on NFS too (unlike O_EXCL on old clients)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def claimed(run_dir: Path) -> Iterator[bool]:
    """Claim the run in ``run_dir`` for this process: yields True when claimed (released on exit), else False."""
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / RUNNING_FILE
    with _locked(run_dir / CLAIM_LOCK):
        holder = read_claim(run_dir)
        if holder is not None and is_stale(holder):
            marker.unlink(missing_ok=True)
            holder = None
        ours = holder is None and _create_exclusive(marker, json.dumps(claim_record()).encode())
    if not ours:
        yield False
        return
    try:
        yield True
    finally:
        marker.unlink(missing_ok=True)


def write_error(run_dir: Path, summary: str, details: str) -> Path:
    """Keep a failed run's error in its folder: a one-line summary, then the details (traceback, output tail)."""
    path = run_dir / ERROR_FILE
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic_write_bytes(path, f"{summary}\n\n{stamp} on {socket.gethostname()}, pid {os.getpid()}\n{details}".encode())
    return path


def run_status(run: Run) -> Status:
    """Where ``run`` stands: done, running (by whom), failed (its error, or a worker that died) or todo."""
    if run.finished:
        return Status("done")
    claim = read_claim(run.run_dir)
    if claim is not None:
        if is_stale(claim):
            return Status("failed", f"its worker stopped without finishing ({_describe(claim)}); rerun the sweep")
        return Status("running", _describe(claim))
    error = run.run_dir / ERROR_FILE
    if error.is_file():
        summary = error.read_text().split("\n", 1)[0]
        return Status("failed", f"{summary} (see {error})")
    done = sum(step.finished for step in run.steps)
    return Status("todo", f"{done} of {len(run.steps)} steps done" if done else "")
