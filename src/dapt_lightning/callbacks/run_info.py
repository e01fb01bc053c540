"""What a run is and what it ran on: W&B run name/group, the resolved config, package versions, git revision."""

from __future__ import annotations

import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_only

PACKAGES = ("torch", "lightning", "open_clip", "dapt_lightning", "torchmetrics", "torchvision", "wandb")


def run_identity(
    module: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    stage: str,
    name: str | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """Name, group and tags of a run: ``<dataset>-<method>-<shots>shots-seed<seed>`` (and ``-<stage>`` for an
    evaluation), grouped without the seed so that seeds aggregate; ``name`` and ``group`` replace them when given."""
    method = getattr(module, "name", "") or type(module).__name__.lower()
    dataset = getattr(datamodule, "dataset_name", "unknown")
    shots = getattr(datamodule, "num_shots", 0)
    seed = getattr(datamodule, "seed", 0)
    subsample = getattr(datamodule, "hparams", {}).get("subsample", "all")
    dataset_part = dataset if subsample == "all" else f"{dataset}-{subsample}"
    group = group or f"{dataset_part}-{method}-{shots}shots"
    name = name or f"{dataset_part}-{method}-{shots}shots-seed{seed}" + ("" if stage == "fit" else f"-{stage}")
    tags = [dataset, method, f"{shots}shots", f"seed{seed}", stage] + ([subsample] if subsample != "all" else [])
    return {"name": name, "group": group, "tags": tags}


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    from importlib import import_module

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = str(getattr(import_module(name), "__version__", "unknown"))
        except ImportError:
            versions[name] = "not installed"
    return versions


def git_revision(path: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``path`` (the package), or ``{"commit": None}``."""
    cwd = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}  # an installed wheel, or no git on this machine
    return {"commit": commit, "dirty": bool(status.strip())}


def resolved_settings(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
    """Settings that no config file states: data root, transforms, image size, CLIP identity, versions, git."""
    datamodule = getattr(trainer, "datamodule", None)
    settings: dict[str, Any] = {
        "versions": package_versions(),
        "git": git_revision(),
        "clip_identity": module.clip_identity.to_dict() if getattr(module, "clip_identity", None) else None,
        "world_size": trainer.world_size,
    }
    if datamodule is not None and hasattr(datamodule, "dataset"):
        from dapt_lightning.data.transforms import build_transform

        preprocessing = datamodule.preprocessing
        settings["data"] = {
            "root": str(datamodule.root),
            "dataset": datamodule.dataset_name,
            "num_classes": len(datamodule.classnames),
            "preprocessing": asdict(preprocessing),
            "transforms": {name: repr(build_transform(name, preprocessing)) for name in ("train", "test")},
            "split_sizes": {split: len(getattr(datamodule.splits, split)) for split in ("train", "val", "test")},
        }
    return settings


def name_run(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    stage: str,
    name: str | None = None,
    group: str | None = None,
) -> bool:
    """Give the trainer's W&B run its name, group and tags (:func:`run_identity`); True if done before the run
    started.

    Lightning starts the W&B run just before the ``setup`` hooks, so the ``dapt`` CLI calls this before
    ``trainer.fit/test``; afterwards only the name and tags can still change (W&B fixes the group at start).
    """
    identity = run_identity(module, datamodule, stage, name, group)
    named = False
    for logger in trainer.loggers:
        if not hasattr(logger, "set_run_identity"):
            continue
        experiment = getattr(logger, "_experiment", None)
        if experiment is None:
            logger.set_run_identity(identity["name"], identity["group"], identity["tags"])
            named = True
        elif trainer.is_global_zero and not getattr(experiment, "group", None):
            experiment.name = identity["name"]
            experiment.tags = sorted(set(experiment.tags or ()) | set(identity["tags"]))
    return named


class RunInfo(L.Callback):
    """Names and groups the W&B run by dataset, method, shots and seed, and logs the resolved settings.

    Args:
        name_runs: derive the run name/group/tags (a name or group given to the logger wins).
    """

    def __init__(self, name_runs: bool = True) -> None:
        self.name_runs = name_runs

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.name_runs:  # a no-op when the CLI already named the run before it started
            name_run(trainer, pl_module, getattr(trainer, "datamodule", None), stage)

    # The settings are logged once the model is built (it may be built from the DataModule, after `setup`).
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_settings(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_settings(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._log_settings(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_settings(trainer, pl_module)

    @rank_zero_only
    def _log_settings(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({"resolved": resolved_settings(trainer, pl_module)})


class LoggedSaveConfig(SaveConfigCallback):
    """Saves ``config.yaml`` beside the run (as Lightning's) and logs the whole resolved config to the loggers."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        import yaml

        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})
