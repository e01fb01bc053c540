"""`dapt tune` on a real PostgreSQL (scripts/services.sh): two workers started at once on an empty database share one
study, and one killed inside a trial leaves that trial failed while the study finishes; the overlay of the best trial
is the one SQLite gives for the same seeded search."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from tiny import SIZES, TINY_CONFIG, kill_inside_second_epoch, write_subset_dataset

from dapt_lightning.data.datasets.synthetic import FOLDER, write_synthetic_dataset
from dapt_lightning.experiments.tune import tune_main
from dapt_lightning.experiments.tune.study import WORKER_ATTR, StudyFolder

pytestmark = [pytest.mark.services, pytest.mark.slow]


def write_world(tmp_path: Path, max_epochs: int) -> list[str]:
    """A 5-class dataset and the pre-trained tiny CLIP; a seeded search without pruning. Returns `dapt tune`'s args."""
    root = tmp_path / "data"
    write_synthetic_dataset(root / FOLDER, seed=0, image_size=64, sizes=SIZES)
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["data"].update(dataset="custom", dataset_options=write_subset_dataset(root), batch_size=5, root=str(root))
    config["model"]["init_args"].update(pretrained="tiny-synthetic", warmup_epochs=0)
    config["trainer"].update(max_epochs=max_epochs, check_val_every_n_epoch=1)
    (tmp_path / "subset.yaml").write_text(yaml.safe_dump(config))
    space = {
        "params": {"model.lr": {"low": 0.002, "high": 20.0, "log": True}},
        "sampler": {"n_startup_trials": 10, "seed": 0},
        "pruner": {"type": "none"},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    return ["--config", "subset.yaml", "--space", "space.yaml", "--heartbeat", "5"]


def test_two_workers_share_a_postgres_study_and_survive_a_killed_worker(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [*write_world(tmp_path, max_epochs=4), "--trials", "4", "--storage", postgres_url]
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dapt_lightning.cli", "tune", *args]
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]  # noqa: SIM115 - closed below
    workers = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    victim, survivor = workers
    try:
        deadline, killed = time.time() + 240, None
        while killed is None and time.time() < deadline:  # the victim's first running trial, once it has one
            time.sleep(0.5)
            try:
                trials = optuna.load_study(study_name="subset", storage=postgres_url).trials
            except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # no study yet, or its tables are being created
                continue
            running = [t for t in trials if t.state.name == "RUNNING"]
            mine = [t for t in running if (t.user_attrs.get(WORKER_ATTR) or {}).get("pid") == victim.pid]
            if mine:
                killed = mine[0].number
                last = StudyFolder(Path("tuned"), "subset").trial_dir(killed) / "seed1" / "checkpoints" / "last.ckpt"
                kill_inside_second_epoch(victim, tmp_path / last)  # 2 of its 4 epochs to go: certainly mid-trial
        assert killed is not None, "the first worker never ran a trial"
        assert survivor.wait(timeout=400) == 0, (tmp_path / "worker1.log").read_text()[-3000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        for log in logs:
            log.close()
    # The survivor marks the orphan failed if it asked for a trial after the kill; otherwise it left the study to the
    # worker still "running" it. Started again, a worker on this host finds that worker's pid gone, fails its trial
    # and finishes the study (or finds it finished, and runs nothing).
    assert tune_main(args) == 0
    trials = optuna.load_study(study_name="subset", storage=postgres_url).trials
    states = [t.state.name for t in trials]
    assert states[killed] == "FAIL" and states.count("COMPLETE") == 4 and states.count("FAIL") == 1
    assert set(states) <= {"COMPLETE", "PRUNED", "FAIL"}
    assert StudyFolder(Path("tuned"), "subset").overlay.is_file()


def test_the_overlay_is_the_same_on_postgres_and_sqlite(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [*write_world(tmp_path, max_epochs=2), "--trials", "3"]
    monkeypatch.chdir(tmp_path)
    assert tune_main([*args, "--out", "on_sqlite"]) == 0
    assert tune_main([*args, "--out", "on_postgres", "--storage", postgres_url]) == 0
    sqlite = StudyFolder(Path("on_sqlite"), "subset").overlay.read_text()
    postgres = StudyFolder(Path("on_postgres"), "subset").overlay.read_text()
    body = [line for line in postgres.splitlines() if not line.startswith("#")]
    assert body == [line for line in sqlite.splitlines() if not line.startswith("#")]
    assert yaml.safe_load(postgres)["model"]["init_args"]["lr"] > 0
