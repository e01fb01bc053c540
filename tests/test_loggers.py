"""The W&B logger writes each run where it was told, whatever the process's working directory was before."""

from __future__ import annotations

from pathlib import Path

import pytest

from dapt_lightning.loggers import DAPTWandbLogger


def test_offline_runs_land_in_their_relative_folder_after_a_change_of_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B's service process starts with the first run and resolves relative folders against its own directory;
    a second run, from another directory, must still be written under that directory's folder."""
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        logger = DAPTWandbLogger(save_dir="out", project="dapt-test", mode="offline")
        logger.log_metrics({"x": 1.0})
        logger.experiment.finish()
        (run,) = (tmp_path / name / "out" / "wandb").glob("offline-run-*")
        assert list(run.glob("run-*.wandb")), f"the {name} run's records are not in its folder"
