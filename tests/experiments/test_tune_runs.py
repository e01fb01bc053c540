"""`dapt tune` end to end on generated data with the tiny CLIP: the README's commands as written (no test image
opened while searching; the overlay reproduces the best trial), and two concurrent workers on one SQLite study, one
killed inside a trial and started again."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import PIL.Image
import pytest
import yaml
from fake_datasets import make_fake_dataset
from tiny import REPO, SIZES, TINY_CONFIG, kill_inside_second_epoch, write_subset_dataset
from wandb_records import OfflineRun

from dapt_lightning.cli import main
from dapt_lightning.data.datasets.synthetic import FOLDER, write_synthetic_dataset
from dapt_lightning.experiments import tune
from dapt_lightning.experiments.tune import command as tune_command
from dapt_lightning.experiments.tune import tune_main
from dapt_lightning.experiments.tune.study import WORKER_ATTR, StudyFolder

SECTION = "## Tuning hyperparameters on a new dataset (`dapt tune`)"
# What the test adds to the README's commands: the tiny CLIP, two epochs of two steps (the fake has 20 training
# images), no t-SNE figures (most of a tiny fit's time); and to `dapt tune`, two trials.
TINY = "--model.clip_name dapt-tiny --model.pretrained null --trainer.max_epochs 2 --data.batch_size 10"
TINY += " --data.num_workers 0 --trainer.enable_progress_bar false --embedding_plots.enabled false"
RUN = Path("runs/oxford_pets/dapt/16shots/seed1")


def readme_tune_commands() -> tuple[str, list[list[str]]]:
    """The data root export and the ``dapt`` commands of the first block of the README's `dapt tune` section."""
    section = (REPO / "README.md").read_text().split(SECTION, 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    export = next(line for line in lines if line.startswith("export DAPT_DATA_ROOT="))
    return export, [shlex.split(line)[1:] for line in lines if line.startswith("dapt ")]


def as_user(command: list[str]) -> list[str]:
    """The README's command with the repository's config paths and the tiny flags."""
    return [str(REPO / arg) if arg.startswith("configs/") else arg for arg in command] + TINY.split()


def split_names(data_root: Path) -> dict[str, set[str]]:
    split = json.loads((data_root / "oxford_pets" / "split_zhou_OxfordPets.json").read_text())
    return {name: {row[0] for row in rows} for name, rows in split.items()}


@pytest.mark.slow
def test_readme_tune_then_fit_never_reads_the_test_split_and_reproduces_the_best_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    export, (tune_args, fit_args) = readme_tune_commands()
    assert export == "export DAPT_DATA_ROOT=/path/to/datasets"
    assert tune_args[:2] == ["tune", "--config"] and fit_args[-2:] == ["--config", "tuned/oxfordpets.yaml"]
    data_root = tmp_path / "datasets"
    make_fake_dataset("oxford_pets", data_root)
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.chdir(user)
    monkeypatch.setenv("DAPT_DATA_ROOT", str(data_root))

    # Every image file opened, and where the search ended (the best settings' final run starts).
    opened: list[str] = []
    open_image, train_best = PIL.Image.open, tune_command.train_best
    monkeypatch.setattr(PIL.Image, "open", lambda fp, *a, **k: opened.append(Path(fp).name) or open_image(fp, *a, **k))
    monkeypatch.setattr(tune_command, "train_best", lambda *a, **k: opened.append("<final>") or train_best(*a, **k))

    main([*as_user(tune_args), "--trials", "2"])
    out = capsys.readouterr().out
    names = split_names(data_root)
    searched, final = opened[: opened.index("<final>")], opened[opened.index("<final>") :]
    assert names["val"] & set(searched) and not names["test"] & set(searched), "a trial opened a test image"
    assert names["test"] & set(final)  # the recorder sees test reads: the final run's test

    folder = StudyFolder(Path("tuned"), "oxfordpets")
    summary = json.loads(folder.summary.read_text())
    best = summary["best_trial"]
    (final_run,) = summary["final"]
    assert final_run["val_acc"] == final_run["trial_val_acc"] == summary["val_acc"]  # the same fit, the same number
    assert 0 <= final_run["test_acc"] <= 1 and summary["final_test_acc"] == final_run["test_acc"]
    overlay = yaml.safe_load(folder.overlay.read_text())
    settings = {key.split(".")[1]: value for key, value in summary["settings"].items()}
    assert overlay == {"seed_everything": 1, "model": {"init_args": settings}}  # the seed the trials used
    assert list(overlay["model"]["init_args"]) == ["lr", "beta_v", "beta_t"]
    with open(folder.trials_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["trial"] for row in rows] == ["0", "1"] and {row["state"] for row in rows} == {"complete"}
    assert (folder.figures / "optimization_history.png").is_file()
    tested = [path.parent for path in folder.root.rglob("per_class_test_accuracy.csv")]
    assert tested == [folder.final_dir(best) / "seed1"]  # trials are never tested
    for trial in (0, 1):
        assert json.loads((folder.trial_dir(trial) / "seed1" / "metrics.json").read_text())["test"] == {}
    # One line per trial, then where everything is.
    assert out.count("[tune] trial 0   complete val/acc 0.") == 1 and "[tune] trial 1   complete" in out
    assert f"  overlay    {folder.overlay}" in out and f"  trials     {folder.trials_csv}" in out

    # W&B (offline here): each trial a run of the study's group, and the study's own run with figures and table.
    trial_run = OfflineRun(next((folder.trial_dir(0) / "seed1" / "wandb").glob("offline-run-*")))
    assert trial_run.run.display_name == "tune-oxfordpets-trial0-seed1" and trial_run.run.run_group == "tune-oxfordpets"
    study_run = OfflineRun(next((folder.root / "wandb").glob("offline-run-*")))
    assert study_run.run.display_name == "tune-oxfordpets"
    assert study_run.media("images/tune/optimization_history*.png") and study_run.media("table/tune/trials*.json")
    assert study_run.summary["best_trial"] == best and study_run.summary["final_test_acc"] == final_run["test_acc"]

    # The README's fit with the overlay (its last epoch validated, so metrics.json holds val/acc): the best trial's
    # validation accuracy again.
    main([*as_user(fit_args), "--trainer.check_val_every_n_epoch", "2"])
    refit = json.loads((RUN / "metrics.json").read_text())
    assert refit["fit"]["val/acc"] == pytest.approx(summary["val_acc"], abs=1e-6)
    assert refit["settings"]["model"]["init_args"]["lr"] == summary["settings"]["model.lr"]


# --- two workers --------------------------------------------------------------------------------------------------


def write_worker_world(tmp_path: Path) -> list[str]:
    """A 5-class custom dataset and the pre-trained tiny CLIP (so settings change the accuracy), four epochs of two
    steps, validated after each (a trial outlasts the kill's wait by two epochs); a space without pruning. Returns the
    `dapt tune` arguments."""
    root = tmp_path / "data"
    write_synthetic_dataset(root / FOLDER, seed=0, image_size=64, sizes=SIZES)
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["data"].update(dataset="custom", dataset_options=write_subset_dataset(root), batch_size=5, root=str(root))
    config["model"]["init_args"].update(pretrained="tiny-synthetic", warmup_epochs=0)
    config["trainer"].update(max_epochs=4, check_val_every_n_epoch=1)
    (tmp_path / "subset.yaml").write_text(yaml.safe_dump(config))
    space = yaml.safe_load(tune.DEFAULT_SPACE.read_text())
    space["pruner"] = {"type": "none"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    return ["--config", "subset.yaml", "--space", "space.yaml", "--trials", "3", "--heartbeat", "5"]


def start_worker(tmp_path: Path, args: list[str], log: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "dapt_lightning.cli", "tune", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / log, "w") as output:
        return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT)


def running_trial_of(folder: StudyFolder, pid: int, deadline: float, after: int = -1) -> int:
    """The number (above ``after``) of the trial that worker ``pid`` runs, once it has one.

    Reads the study's SQLite file read-only (Optuna would create its tables, racing the workers that do).
    """
    query = (
        "SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
        f"WHERE t.state = 'RUNNING' AND a.key = '{WORKER_ATTR}' AND t.number > ?"
    )
    while time.time() < deadline:
        time.sleep(0.2)
        if not folder.database.is_file():
            continue
        try:
            with sqlite3.connect(f"file:{folder.database}?mode=ro", uri=True) as db:
                rows = db.execute(query, (after,)).fetchall()
        except sqlite3.Error:  # its tables are not there yet
            continue
        for number, worker in rows:
            if json.loads(worker).get("pid") == pid:
                return number
    raise AssertionError(f"worker {pid} started no trial after trial {after}")


def state_of(folder: StudyFolder, number: int) -> str:
    """Trial ``number``'s state as the study's SQLite file holds it (read-only, as in `running_trial_of`)."""
    with sqlite3.connect(f"file:{folder.database}?mode=ro", uri=True) as db:
        return db.execute("SELECT state FROM trials WHERE number = ?", (number,)).fetchone()[0]


@pytest.mark.slow
def test_two_workers_share_a_study_and_a_killed_trial_is_failed_and_set_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    args = write_worker_world(tmp_path)
    folder = StudyFolder(Path("tuned"), "subset")
    monkeypatch.chdir(tmp_path)
    # The first worker, a process of its own, runs a trial, then is killed inside its second trial's second epoch.
    # The second worker (this process, which has everything imported) starts with that second trial.
    first = start_worker(tmp_path, args, "first.log")
    errors: list[BaseException] = []

    def kill_first() -> None:
        try:
            kill_inside_second_epoch(first, folder.trial_dir(killed) / "seed1" / "checkpoints" / "last.ckpt")
            # Otherwise the kill landed between trials, and the rest of the test would fail without saying why.
            assert state_of(folder, killed) != "COMPLETE", f"trial {killed} finished before its worker was killed"
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)

    try:
        deadline = time.time() + 240
        killed = running_trial_of(folder, first.pid, deadline, after=running_trial_of(folder, first.pid, deadline))
        killer = threading.Thread(target=kill_first)
        killer.start()
        assert tune_main(args) == 0
        killer.join()
        assert not errors, errors
        # Started again, a worker marks the killed trial failed if no worker has yet, and finishes the study (or,
        # when the second worker did, finds it done and its final run there, and runs nothing).
        assert tune_main(args) == 0
    finally:
        if first.poll() is None:
            first.kill()
    out = capsys.readouterr().out
    first_log = (tmp_path / "first.log").read_text()

    trials = optuna.load_study(study_name="subset", storage=f"sqlite:///{folder.database}").trials
    complete = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert [t.state for t in trials].count(optuna.trial.TrialState.FAIL) == 1 and len(complete) == 3
    assert trials[killed].state == optuna.trial.TrialState.FAIL and len(trials) == 4
    # The killed trial: marked failed by the next worker on this host, its folder set apart with why.
    assert not folder.trial_dir(killed).exists() and (folder.failed_dir(killed) / "seed1" / "checkpoints").is_dir()
    reason = (folder.failed_dir(killed) / "error.txt").read_text().split("\n")[0]
    worker = f"pid {first.pid} on {socket.gethostname()}"
    assert reason == f"its worker stopped without finishing ({worker}, no longer running)"
    assert out.count(f"[tune] trial {killed} failed: {reason}") == 1
    # Both workers completed trials, and none ran twice: one run folder per complete trial, holding that trial's
    # settings, by the worker that says so.
    workers = {trial.number: trial.user_attrs[WORKER_ATTR]["pid"] for trial in complete}
    assert set(workers.values()) == {first.pid, os.getpid()}
    assert sorted(p.name for p in (folder.root / "trials").iterdir() if p.name != "failed") == [
        f"{number:04d}" for number in workers
    ]
    for trial in complete:
        settings = json.loads((folder.trial_dir(trial.number) / "seed1" / "metrics.json").read_text())["settings"]
        assert settings["model"]["init_args"]["lr"] == trial.params["model.lr"]
        line = f"[tune] trial {trial.number:<3d} complete"
        assert (first_log.count(line), out.count(line)) == ((1, 0) if workers[trial.number] == first.pid else (0, 1))
    assert len({trial.params["model.lr"] for trial in trials}) == 4
    # The two workers ran at the same time: the killed trial overlapped one of the second worker's.
    victim = trials[killed]
    assert any(
        t.datetime_start < victim.datetime_complete and victim.datetime_start < t.datetime_complete
        for t in complete
        if workers[t.number] == os.getpid()
    )
    # The best settings were trained and tested once, and reproduce the best trial's val/acc.
    summary = json.loads(folder.summary.read_text())
    assert out.count("[tune] training the best settings") == 1
    assert summary["final"][0]["val_acc"] == summary["val_acc"] == max(t.value for t in complete)
    assert summary["trials"] == {"finished": 3, "complete": 3, "pruned": 0, "failed": 1}
    with open(folder.trials_csv) as handle:
        failed_row = next(row for row in csv.DictReader(handle) if row["state"] == "failed")
    assert failed_row["folder"] == str(folder.failed_dir(killed)) and failed_row["error"] == reason


@pytest.mark.slow
def test_sigterm_marks_the_running_trial_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    args = [*write_worker_world(tmp_path), "--trainer.max_epochs", "50"]
    folder = StudyFolder(Path("tuned"), "subset")
    monkeypatch.chdir(tmp_path)

    def terminate_inside_the_fit() -> None:
        deadline = time.time() + 120
        while not (folder.trial_dir(0) / "seed1").is_dir() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(2.0)  # well into the fit
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill` or Slurm's time limit sends

    # A signal arriving after the search would meet this handler, not the default one (which ends the test run).
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    thread = threading.Thread(target=terminate_inside_the_fit)
    thread.start()
    try:
        assert tune_main(args) == 130
    finally:
        thread.join()
        signal.signal(signal.SIGTERM, previous)
    out = capsys.readouterr().out
    (trial,) = optuna.load_study(study_name="subset", storage=f"sqlite:///{folder.database}").trials
    assert trial.state == optuna.trial.TrialState.FAIL
    summary = (folder.failed_dir(0) / "error.txt").read_text().split("\n")[0]
    assert summary == "interrupted (RunInterrupted: SIGTERM); rerun the command to go on with the study"
    assert not folder.trial_dir(0).exists() and (folder.failed_dir(0) / "seed1").is_dir()
    assert "[tune] interrupted: the running trial is recorded as failed; rerun the command to go on" in out
