"""Where each run of a sweep stands: ``done``, ``running`` (by whom), ``failed`` (its error, or a worker that died)
or ``todo``, as ``dapt sweep --list`` shows it."""

from __future__ import annotations

from dataclasses import dataclass

from dapt_lightning.experiments.claims import ERROR_FILE, describe, is_stale, read_claim
from dapt_lightning.experiments.sweep.plan import Run

STATES = ("done", "running", "failed", "todo")


@dataclass(frozen=True)
class Status:
    """A run's state (one of :data:`STATES`) and what to know about it (who runs it, its error, ...)."""

    state: str
    detail: str = ""


def run_status(run: Run) -> Status:
    """Where ``run`` stands: done, running (by whom), failed (its error, or a worker that died) or todo."""
    if run.finished:
        return Status("done")
    claim = read_claim(run.run_dir)
    if claim is not None:
        if is_stale(claim):
            return Status("failed", f"its worker stopped without finishing ({describe(claim)}); rerun the sweep")
        return Status("running", describe(claim))
    error = run.run_dir / ERROR_FILE
    if error.is_file():
        summary = error.read_text().split("\n", 1)[0]
        return Status("failed", f"{summary} (see {error})")
    done = sum(step.finished for step in run.steps)
    return Status("todo", f"{done} of {len(run.steps)} steps done" if done else "")
