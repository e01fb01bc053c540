"""Weights & Biases logging that works without an account: offline mode unless credentials exist."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger


def wandb_credentials_present() -> bool:
    """True when ``WANDB_API_KEY`` is set or ``~/.netrc`` holds an api.wandb.ai entry (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class DAPTWandbLogger(WandbLogger):
    """A WandbLogger that runs offline when no W&B credentials are configured and says how to sync.

    Args:
        save_dir: folder for the ``wandb/`` run directories.
        project: W&B project. name/group: run name and group; None derives them from dataset, method,
            shots and seed when fitting starts.
        mode: ``online``, ``offline`` or ``disabled``; None: ``$WANDB_MODE``, else offline without credentials.
    """

    def __init__(
        self,
        save_dir: str = "runs",
        project: str = "dapt_lightning",
        name: str | None = None,
        group: str | None = None,
        mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        mode = mode or os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_present() else "offline")
        # W&B writes a run's files from its service process, which outlives this process's changes of directory and
        # resolves a relative folder against its own: a later run in another directory would write elsewhere.
        save_dir = os.path.abspath(save_dir)
        super().__init__(save_dir=save_dir, project=project, name=name, group=group, mode=mode, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            # Passed on as None, it only makes W&B warn that the setting is deprecated.
            self._wandb_init.pop("anonymous", None)
        self.mode = mode
        self.project = project

    @property
    def experiment(self) -> Any:
        """The W&B run, started on first use (rank zero); its folder is made then, not when the logger is built."""
        if self._experiment is None and self._save_dir:
            Path(self._save_dir).mkdir(parents=True, exist_ok=True)
        return WandbLogger.experiment.fget(self)

    def set_run_identity(self, name: str, group: str, tags: list[str]) -> None:
        """Name and group the run before its first log (W&B fixes them when the run starts)."""
        if self._experiment is None:
            self._wandb_init.setdefault("name", name)
            if not self._wandb_init.get("name"):
                self._wandb_init["name"] = name
            if not self._wandb_init.get("group"):
                self._wandb_init["group"] = group
            self._wandb_init["tags"] = sorted(set(self._wandb_init.get("tags") or []) | set(tags))

    @property
    def offline_run_dir(self) -> Path | None:
        """The folder of this offline W&B run (what ``wandb sync`` uploads), or None when online or not started."""
        if self.mode != "offline" or self._experiment is None:
            return None
        return Path(self._experiment.dir).parent


def finish_wandb_runs(trainer: Any) -> None:
    """End the W&B runs of a trainer: Lightning's WandbLogger would otherwise reuse them for the next in-process run."""
    for logger in getattr(trainer, "loggers", None) or []:
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()
