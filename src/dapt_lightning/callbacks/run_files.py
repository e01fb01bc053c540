"""A run's files in one folder: ``run.log`` (a copy of its log lines), ``metrics.json`` (what it measured, the mark
of a finished run) and the closing summary that says where everything went. Each is a callback of its own, so a
plain ``Trainer`` keeps the same files as ``dapt fit`` by adding them."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from dapt_lightning.storage import atomic_write_bytes

METRICS_FILE = "metrics.json"
RUN_LOG = "run.log"
METRICS_FORMAT = 1
TRAINED_ON = ("dataset", "num_shots", "seed", "subsample")
"""The DataModule settings that say what prompts were trained on."""


def metric_values(metrics: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The logged scalars whose names start with one of ``prefixes``, as plain Python numbers (None for NaN)."""
    return {k: _number(v) for k, v in sorted(metrics.items()) if k.startswith(prefixes) and "/" in k}


def _number(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    return value


def write_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON atomically (floats at full precision: ``json`` writes their shortest exact repr)."""
    record = {"format": METRICS_FORMAT, **record}
    atomic_write_bytes(Path(path), (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A run's ``metrics.json``."""
    with open(path) as handle:
        return json.load(handle)


class MetricsFile(L.Callback):
    """Writes ``metrics.json`` (atomically, rank zero) when the run's evaluation is done: what ran, on what data,
    trained on what, and every ``test/*``, ``val/*`` and ``train/*`` metric at full precision.

    Args:
        path: the file (``<run folder>/metrics.json``).
        label: the method's name in result tables (a sweep's variant name); None: the method's own name.
        settings: the run's resolved settings, recorded as they are (the CLI's whole configuration).
        after_test: the run is tested after fitting: write once the test has ended, not when fitting ends (a
            ``metrics.json`` marks a finished run).
    """

    def __init__(
        self,
        path: str | Path,
        label: str | None = None,
        settings: dict[str, Any] | None = None,
        after_test: bool = False,
    ) -> None:
        self.path = Path(path)
        self.label = label
        self.settings = settings
        self.after_test = after_test
        self._started: float | None = None
        self._fit_metrics: dict[str, Any] | None = None
        self._trained_on: dict[str, Any] | None = None
        self.record: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._started is None:
            self._started = time.time()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != "fit":  # evaluating trained prompts: record what they were trained on
            self._trained_on = dict(checkpoint.get("datamodule_hyper_parameters") or {})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_metrics = metric_values(trainer.callback_metrics, ("val/", "train/"))
        self._trained_on = dict(getattr(trainer.datamodule, "hparams", {}) or {})
        if not self.after_test:
            self._write(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        fitted = self._fit_metrics is not None
        name = getattr(pl_module, "name", "") or type(pl_module).__name__.lower()
        ckpt_path = None if fitted else trainer.ckpt_path
        trained_on = self._trained_on if (fitted or ckpt_path) else None
        identity = getattr(pl_module, "clip_identity", None)
        self.record = {
            "kind": "fit" if fitted else "test",
            "dataset": getattr(datamodule, "dataset_name", None),
            "method": name,
            "label": self.label or name,
            "shots": getattr(datamodule, "num_shots", None),
            "seed": getattr(datamodule, "seed", None),
            "subsample": (getattr(datamodule, "hparams", {}) or {}).get("subsample", "all"),
            "num_classes": len(getattr(pl_module, "classnames", []) or []),
            "trained_on": None if trained_on is None else {k: trained_on.get(k) for k in TRAINED_ON},
            "ckpt_path": str(ckpt_path) if ckpt_path else None,
            "test": metric_values(trainer.callback_metrics, ("test/",)),
            "fit": self._fit_metrics or {},
            "epochs": trainer.current_epoch,
            "elapsed_s": time.time() - (self._started or time.time()),
            "clip": identity.to_dict() if identity is not None else None,
            "settings": self.settings if self.settings is not None else {"model": dict(pl_module.hparams)},
        }
        write_metrics(self.path, self.record)


class RunLog(L.Callback):
    """A plain-text copy of what a run logs (Lightning's and dapt_lightning's messages) in ``path``: from each
    stage's ``setup`` to its ``teardown``, or from :meth:`attach` (the CLI attaches before the data is read).

    Args:
        path: the log file (``<run folder>/run.log``); lines are appended.
    """

    LOGGERS = ("lightning.pytorch", "lightning.fabric", "dapt_lightning")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.handler: logging.FileHandler | None = None

    def attach(self) -> None:
        """Start copying log lines (idempotent)."""
        if self.handler is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self.handler)

    def detach(self) -> None:
        """Stop copying log lines (idempotent)."""
        if self.handler is None:
            return
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self.handler)
        self.handler.close()
        self.handler = None

    def write(self, lines: list[str]) -> None:
        """Append ``lines`` (printed to the console as well) to the log."""
        if self.handler is not None:
            self.handler.stream.write("\n".join(lines) + "\n")
            self.handler.flush()
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            self.attach()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.detach()


class ClosingSummary(L.Callback):
    """Prints, when the run's evaluation is done (rank zero, after Lightning's own table), its metrics and where
    its checkpoint, metrics, log and W&B files are, with the ``wandb sync`` command once; also into the run's log.

    Args:
        folder: the run folder.
        after_test: the run is tested after fitting: summarise once the test has ended.
        run_log: the run's :class:`RunLog`, which gets the same lines.
    """

    def __init__(self, folder: str | Path, after_test: bool = False, run_log: RunLog | None = None) -> None:
        self.folder = Path(folder)
        self.after_test = after_test
        self.run_log = run_log
        self.lines: list[str] = []

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "test" or (stage == "fit" and not self.after_test):
            self._summarise(trainer)

    @rank_zero_only
    def _summarise(self, trainer: L.Trainer) -> None:
        self.lines = closing_summary(self.folder, trainer.callback_metrics, trainer.loggers)
        print("\n".join(self.lines), flush=True)
        if self.run_log is not None:
            self.run_log.write(self.lines)


def closing_summary(run_dir: Path, metrics: dict[str, Any], loggers: list[Any]) -> list[str]:
    """The lines that end a run: its metrics and where everything went (the W&B sync command once)."""
    lines = [f"Run folder: {run_dir}"]
    shown = {k: v for k, v in metric_values(metrics, ("test/", "val/")).items() if "dispersion" not in k}
    if shown:
        lines.append("  " + "  ".join(f"{name} {value:.4f}" for name, value in shown.items() if value is not None))
    for label, path in (("checkpoint", run_dir / "checkpoints" / "last.ckpt"), ("metrics", run_dir / METRICS_FILE)):
        if path.is_file():
            lines.append(f"  {label:<10} {path}")
    lines.append(f"  {'log':<10} {run_dir / RUN_LOG}")
    for logger in loggers:
        offline = getattr(logger, "offline_run_dir", None)
        if offline is not None:
            lines.append(f"  {'W&B':<10} saved offline; upload it with: wandb sync {offline}")
    return lines
