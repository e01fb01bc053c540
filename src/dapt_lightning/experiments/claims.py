"""Who runs what: a run folder's ``RUNNING`` claim and a failed run's ``error.txt``.

Every run (``dapt fit``, a sweep's run, a tuning trial) claims its folder by creating ``RUNNING`` (pid, host, start
time) there with ``os.link``, which fails if the file exists, so two processes (or jobs on hosts sharing the file
system) never run in one folder at once. A process may claim a folder it holds already (a sweep's worker, then the
fit it runs). A claim whose process is gone is stale, and the next claimant takes the folder over: on the same host,
the pid is dead or belongs to a newer process; on another host, the claim names the Slurm job it ran in and that job
has left Slurm's queue (a node failure or an out-of-memory kill, which no signal handler sees). Any other claim from
another host cannot be checked, and counts as held.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dapt_lightning.storage import atomic_write_bytes

RUNNING_FILE = "RUNNING"
ERROR_FILE = "error.txt"


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
    """What a ``RUNNING`` marker says: pid (default: this process), host, time, the process's start in ticks, and
    the Slurm job it runs in, if any."""
    pid = os.getpid() if pid is None else pid
    record = {"pid": pid, "host": socket.gethostname(), "started": time.time(), "process_start": _process_start(pid)}
    if os.environ.get("SLURM_JOB_ID"):
        record["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return record


def slurm_job_ended(job: str) -> bool | None:
    """Whether Slurm job ``job`` has left the queue (True), is still in it (False), or Slurm cannot say (None)."""
    if shutil.which("squeue") is None:
        return None
    try:
        answer = subprocess.run(
            ["squeue", "--noheader", "--jobs", job, "--format", "%T"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if answer.returncode == 0:
        return not answer.stdout.strip()
    return True if "Invalid job id" in answer.stderr else None  # a job long gone is no longer known at all


def read_claim(run_dir: Path) -> dict[str, Any] | None:
    """The ``RUNNING`` marker of a run folder; None when there is none. An unreadable one reads as ``{}``."""
    try:
        text = (run_dir / RUNNING_FILE).read_text()
    except (FileNotFoundError, NotADirectoryError):  # no claim (or no folder: its creation says what is wrong)
        return None
    try:
        claim = json.loads(text)
    except ValueError:
        return {}
    return claim if isinstance(claim, dict) else {}


def holder_of(run_dir: Path) -> dict[str, Any] | None:
    """The live claim on ``run_dir`` held by another process (None when free, stale or this process's own)."""
    claim = read_claim(run_dir)
    if claim is None or is_stale(claim) or _is_mine(claim):
        return None
    return claim


def _is_mine(claim: dict[str, Any]) -> bool:
    return claim.get("host") == socket.gethostname() and claim.get("pid") == os.getpid()


def is_stale(claim: dict[str, Any]) -> bool:
    """True when the claiming process is gone: on this host, its pid is dead or now names another process; on another
    host, the Slurm job it ran in has left the queue."""
    if claim.get("host") != socket.gethostname():
        job = claim.get("slurm_job")
        return bool(job) and slurm_job_ended(str(job)) is True
    if not isinstance(claim.get("pid"), int):
        return False
    if not _alive(claim["pid"]):
        return True
    started = claim.get("process_start")
    now = _process_start(claim["pid"])
    return started is not None and now is not None and started != now


def describe(claim: dict[str, Any]) -> str:
    """Who holds a claim, for messages: ``pid 123 on host since 2026-12-03 07:00:00``."""
    if not claim:
        return f"unreadable {RUNNING_FILE} marker; delete it if no worker runs this"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(claim.get("started", 0)))
    job = f", Slurm job {claim['slurm_job']}" if claim.get("slurm_job") else ""
    return f"pid {claim.get('pid')} on {claim.get('host')}{job} since {started}"


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # Serialises claim decisions on this host, so two workers cannot both take over the same stale claim. The lock is
    # the folder's own (flock on its descriptor): no lock file is left in the run folder.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


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
    with _locked(run_dir):
        holder = read_claim(run_dir)
        if holder is not None and is_stale(holder):
            marker.unlink(missing_ok=True)
            holder = None
        if holder is not None and _is_mine(holder):
            yield True  # held already by this process (a sweep's worker, then its fit): the outer claim releases it
            return
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
