"""What a run is and what it ran on: W&B run name/group, the resolved config, package versions, git revision."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_only

from dapt_lightning.callbacks.paths import output_folder
from dapt_lightning.storage import atomic_write_bytes

PACKAGES = ("torch", "lightning", "open_clip", "dapt_lightning", "torchmetrics", "torchvision", "wandb")


def run_identity(
    module: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    stage: str,
    name: str | None = None,
    group: str | None = None,
    trained_on: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Name, group and tags of a run: ``<dataset>-<method>-<shots>shots-seed<seed>``, grouped without the seed so that
    seeds aggregate; ``name`` and ``group`` replace them when given.

    An evaluation of trained prompts is named after the run that trained them (``trained_on``: its DataModule
    settings) and grouped with it, ending ``-<stage>``, and ``-on-<dataset>`` when it tests other data.
    """
    method = getattr(module, "name", "") or type(module).__name__.lower()
    dataset = getattr(datamodule, "dataset_name", "unknown")
    shots = getattr(datamodule, "num_shots", 0)
    seed = getattr(datamodule, "seed", 0)
    subsample = (getattr(datamodule, "hparams", {}) or {}).get("subsample", "all")
    tested = _dataset_part(dataset, subsample)
    trained = _dataset_part(trained_on["dataset"], trained_on.get("subsample", "all")) if trained_on else tested
    group = group or f"{trained}-{method}-{shots}shots"
    suffix = "" if stage == "fit" else f"-{stage}" + ("" if tested == trained else f"-on-{tested}")
    name = name or f"{trained}-{method}-{shots}shots-seed{seed}{suffix}"
    tags = [dataset, method, f"{shots}shots", f"seed{seed}", stage] + ([subsample] if subsample != "all" else [])
    return {"name": name, "group": group, "tags": tags + ([f"trained-on-{trained}"] if trained != tested else [])}


def _dataset_part(dataset: str, subsample: str) -> str:
    return dataset if subsample == "all" else f"{dataset}-{subsample}"


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
        own_images = getattr(datamodule, "images", None) is not None
        settings["data"] = {
            "preprocessing": asdict(preprocessing),
            "transforms": {name: repr(build_transform(name, preprocessing)) for name in ("train", "test")},
        }
        if own_images:  # a user's own images: no dataset, splits or classes of their own
            settings["data"] |= {"images": len(datamodule.predict_paths), "num_classes": len(module.classnames)}
        else:
            settings["data"] |= {
                "root": str(datamodule.root),
                "dataset": datamodule.dataset_name,
                "num_classes": len(datamodule.classnames),
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
    trained_on: Mapping[str, Any] | None = None,
) -> bool:
    """Give the trainer's W&B run its name, group and tags (:func:`run_identity`); True if done before the run
    started.

    Lightning starts the W&B run just before the ``setup`` hooks, so the ``dapt`` CLI calls this before
    ``trainer.fit/test``; afterwards only the name and tags can still change (W&B fixes the group at start).
    """
    identity = run_identity(module, datamodule, stage, name, group, trained_on)
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
    """Saves ``config.yaml`` beside the run, atomically (a full disk leaves no half-written file), and logs the whole
    resolved config to the loggers."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        folder = output_folder(trainer)  # on every rank: the log folder is broadcast
        if trainer.is_global_zero:
            text = self.parser.dump(self.config, skip_none=False)
            atomic_write_bytes(folder / self.config_filename, text.encode())
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        # Every rank in step for later calls to setup (fit, then test).
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        import yaml

        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})
