"""The one way a run happens: :func:`execute` takes a :class:`RunSpec` and returns a :class:`RunRecord`.

``dapt fit/validate/test/predict``, ``dapt sweep``, ``dapt tune`` and ``dapt demo`` all build a RunSpec and call
:func:`execute`, in this process or in a worker process of their own; it owns what every run needs around the
Trainer: a quiet console, SIGINT/SIGTERM turned into :class:`RunInterrupted`, and the W&B run closed afterwards
(so that the next run in the same process gets its own).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from dapt_lightning.callbacks.predictions import PredictionWriter
from dapt_lightning.callbacks.run_files import METRICS_FILE, metric_values, read_metrics
from dapt_lightning.experiments.console import quiet_console
from dapt_lightning.experiments.run_spec import RunSpec
from dapt_lightning.experiments.runs import last_checkpoint
from dapt_lightning.experiments.trainer_cli import DAPTCLI

__all__ = ["RunInterrupted", "RunRecord", "RunSpec", "execute", "failure_line", "interruptible"]


class RunInterrupted(BaseException):  # noqa: N818  (a signal, like KeyboardInterrupt, not an error)
    """SIGINT or SIGTERM (Ctrl-C, ``kill``, a Slurm time limit) while a run was running.

    Not a KeyboardInterrupt: Lightning would turn that into ``exit(1)`` and the caller could not tell why.
    """


@dataclass(frozen=True)
class RunRecord:
    """What a run left: its folder, its checkpoint, the metrics it measured and its ``metrics.json``.

    Attributes:
        command: the run's command.
        run_dir: its folder (None for runs without one).
        checkpoint: its ``last.ckpt`` (None when it has none).
        metrics: the scalars it logged last (``test/*``, ``val/*``, ``train/*``).
        record: its ``metrics.json`` (empty when it wrote none, e.g. ``predict``).
        skipped_images: ``(file, reason)`` of the images a ``predict`` could not read (and did not classify).
        trainer, model, datamodule: the run's own objects, to look into after an in-process run.
    """

    command: str
    run_dir: Path | None
    checkpoint: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    skipped_images: tuple[tuple[str, str], ...] = ()
    trainer: L.Trainer | None = field(default=None, repr=False, compare=False)
    model: L.LightningModule | None = field(default=None, repr=False, compare=False)
    datamodule: L.LightningDataModule | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, cli: DAPTCLI) -> RunRecord:
        """The record of a finished CLI run."""
        options = cli.config[cli.subcommand].get("run")
        run_dir = Path(options.dir) if options is not None and options.dir else None
        checkpoint = last_checkpoint(run_dir) if run_dir is not None else None
        metrics_file = run_dir / METRICS_FILE if run_dir is not None else None
        return cls(
            command=cli.subcommand,
            run_dir=run_dir,
            checkpoint=checkpoint if checkpoint is not None and checkpoint.is_file() else None,
            metrics=metric_values(cli.trainer.callback_metrics, ("test/", "val/", "train/")),
            record=read_metrics(metrics_file) if metrics_file is not None and metrics_file.is_file() else {},
            skipped_images=tuple(
                item
                for callback in cli.trainer.callbacks
                if isinstance(callback, PredictionWriter)
                for item in callback.skipped
            ),
            trainer=cli.trainer,
            model=cli.model,
            datamodule=cli.datamodule,
        )


def execute(spec: RunSpec, callbacks: tuple[L.Callback, ...] = ()) -> RunRecord:
    """Run ``spec`` in this process and return what it left.

    Args:
        spec: the run.
        callbacks: more callbacks for its Trainer (in-process only: ``dapt tune`` reports to its trial so).

    Raises:
        RunInterrupted: SIGINT or SIGTERM arrived during the run.
    """
    try:
        with quiet_console(), interruptible():
            cli = DAPTCLI(spec, callbacks=callbacks)  # ends its W&B runs and its log when it fails
    except BaseException:
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish(exit_code=1)  # a run that failed before its trainer existed would be reused by the next
        raise
    try:
        return RunRecord.of(cli)
    finally:
        cli.close()


def failure_line(error: BaseException) -> str:
    """What stopped a run, in one line: ``UsageError: unknown setting ...``, ``RunInterrupted: SIGTERM``."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`RunInterrupted` (in the main thread; elsewhere signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise RunInterrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
