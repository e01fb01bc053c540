"""A study on disk and in its Optuna storage: the folder layout, joining the study, trials whose worker died, and
the loop that runs trials until the study has enough.

    <out>/<name>.yaml              the best settings as a config overlay
    <out>/<name>/
        study.db                   the default storage (SQLite): every worker on this machine joins it
        trials/<k>/seed<s>/        trial k's run folder for each seed (config.yaml, checkpoints, metrics.json)
        trials/failed/<k>/         a failed trial's folders, moved apart, with error.txt saying why
        final/trial<k>/seed<s>/    the best trial's settings trained again (with the overlay) and tested
        trials.csv  summary.json  figures/optimization_history.png  figures/param_importances.png

Any number of workers (processes here, or jobs elsewhere with a database URL) run the same command and share the
study. A worker records its pid and host in each trial it runs; a trial left running by a worker that died is
marked failed by the next worker on the same host (its pid is gone), or on any host once its heartbeat is older
than the grace period (Optuna's heartbeat), and its folder is moved to ``trials/failed/``.
"""

from __future__ import annotations

import fcntl
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from dapt_lightning.experiments.claims import is_stale, write_error
from dapt_lightning.experiments.tune.space import SearchSpace

WORKER_ATTR = "worker"
"""The trial user attribute holding its worker's pid, host and start (``claims.claim_record``)."""
OPEN_ATTEMPTS = 3
"""Tries to open a storage before giving up (a database being created by another worker fails the first)."""
STATE_NAMES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.RUNNING: "running",
    TrialState.FAIL: "failed",
    TrialState.WAITING: "waiting",
}


@dataclass(frozen=True)
class StudyFolder:
    """Where a study's files go: ``<out>/<name>/`` and the overlay ``<out>/<name>.yaml``."""

    out: Path
    name: str

    @property
    def root(self) -> Path:
        return self.out / self.name

    @property
    def overlay(self) -> Path:
        return self.out / f"{self.name}.yaml"

    @property
    def database(self) -> Path:
        return self.root / "study.db"

    @property
    def trials_csv(self) -> Path:
        return self.root / "trials.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / f"{number:04d}"

    def failed_dir(self, number: int) -> Path:
        return self.root / "trials" / "failed" / f"{number:04d}"

    def final_dir(self, number: int) -> Path:
        return self.root / "final" / f"trial{number:04d}"


class FolderLock:
    """An exclusive lock (``flock``) on a file of the study folder, held across a few calls (acquire/release)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a")  # noqa: SIM115 - held until release(), across calls
        fcntl.flock(handle, fcntl.LOCK_EX)
        self._handle = handle

    def release(self) -> None:
        """Release the lock; does nothing when it is not held (so every path out may call it)."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def set_aside(folder: StudyFolder, number: int, summary: str, details: str = "") -> Path:
    """Move failed trial ``number``'s folder to ``trials/failed/<k>/`` and write why there (``error.txt``)."""
    source, target = folder.trial_dir(number), folder.failed_dir(number)
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.exists():
        shutil.rmtree(target, ignore_errors=True)  # left by an earlier study of the same name
        shutil.move(str(source), str(target))
    target.mkdir(parents=True, exist_ok=True)
    return write_error(target, summary, details)


def open_study(url: str, name: str, space: SearchSpace, folder: StudyFolder, heartbeat: int) -> optuna.Study:
    """Create the study, or join it when it exists (its trials so far guide the sampler).

    Args:
        url: an SQLAlchemy database URL (``sqlite:///FILE``, ``postgresql://...``).
        name: the study's name in the storage.
        space: gives the sampler and pruner.
        folder: where failed trials' folders are moved.
        heartbeat: seconds between a running trial's heartbeats; a trial without one for twice that is failed.
    """

    def heartbeat_stopped(study: optuna.Study, trial: FrozenTrial) -> None:
        grace = 2 * heartbeat
        summary = f"its worker stopped without finishing (no heartbeat for {grace} s; {_describe(trial)})"
        set_aside(folder, trial.number, summary)
        print(f"[tune] trial {trial.number} failed: {summary}", flush=True)

    # SQLite waits for a lock held by another worker instead of failing at once.
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                # Optuna flags its heartbeat arguments as experimental: nothing a user can act on.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=heartbeat,
                    grace_period=2 * heartbeat,
                    heartbeat_stale_trial_callback=heartbeat_stopped,
                )
            break
        except Exception as error:  # SQLAlchemy's: a bad URL, a missing driver, an unreachable server, a race
            if isinstance(error, sqlalchemy.exc.DBAPIError) and attempt + 1 < OPEN_ATTEMPTS:
                # Workers on several machines opening a new database at once race to create its tables.
                time.sleep(1 + attempt)
                continue
            reason = " ".join(str(error).split())
            raise ValueError(
                f"--storage {url}: cannot open it ({type(error).__name__}: {reason}); give sqlite:///FILE or a "
                "database URL such as postgresql://user:password@host/db (its driver installed)"
            ) from None
    return optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=space.make_sampler(),
        pruner=space.make_pruner(),
        load_if_exists=True,
    )


def _describe(trial: FrozenTrial) -> str:
    worker = trial.user_attrs.get(WORKER_ATTR) or {}
    return f"pid {worker.get('pid')} on {worker.get('host')}" if worker else "worker unknown"


def fail_trials_of_dead_workers(study: optuna.Study, folder: StudyFolder) -> list[int]:
    """Mark failed the running trials whose worker is gone (on this host, or in a Slurm job that has left the queue);
    set their folders apart.

    Other hosts' trials are otherwise left to the heartbeat. Returns the numbers of the trials failed here.
    """
    storage = study._storage  # the study's storage: Optuna offers no public handle, and state changes go through it
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if not worker or not is_stale(worker):  # a pid on this host, or the Slurm job of a worker elsewhere
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker marked it first
        summary = f"its worker stopped without finishing ({_describe(trial)}, no longer running)"
        path = set_aside(folder, trial.number, summary)
        print(f"[tune] trial {trial.number} failed: {summary}; folder kept in {path.parent}", flush=True)
        failed.append(trial.number)
    return failed


def count_states(study: optuna.Study) -> Counter[str]:
    """How many trials are ``finished`` (complete or pruned), ``complete``, ``pruned``, ``running`` and ``failed``."""
    counts = Counter(STATE_NAMES[trial.state] for trial in study.get_trials(deepcopy=False))
    counts["finished"] = counts["complete"] + counts["pruned"]
    return counts


def search(
    study: optuna.Study,
    folder: StudyFolder,
    objective: Callable[[optuna.Trial, Callable[[], None]], float],
    target: int,
    on_trial: Callable[[optuna.Study, FrozenTrial], None],
    catch: tuple[type[Exception], ...] = (),
) -> Counter[str]:
    """Run trials until the study has ``target`` finished or running ones; returns the counts then.

    Counting and creating the next trial happen under a lock in the study folder, so workers sharing that folder
    never start more than ``target`` trials between them; ``objective(trial, release)`` releases it once its trial
    exists. Trials that raise one of ``catch`` are failed and the search goes on; any other error ends it.

    Raises:
        RuntimeError: as many trials failed as were asked for (something is wrong with every trial).
    """
    lock = FolderLock(folder.root / ".ask.lock")
    while True:
        lock.acquire()
        try:
            fail_trials_of_dead_workers(study, folder)
            counts = count_states(study)
            if counts["finished"] + counts["running"] >= target:
                return counts
            if counts["failed"] >= target:
                raise RuntimeError(
                    f"{counts['failed']} trials of study {study.study_name!r} failed, as many as --trials asks for: "
                    f"fix the cause (error.txt in {folder.root / 'trials' / 'failed'}) and rerun"
                )

            def run(trial: optuna.Trial) -> Any:
                return objective(trial, lock.release)

            study.optimize(run, n_trials=1, catch=catch, callbacks=[on_trial])
        finally:
            lock.release()
