"""`dapt tune`'s pieces without fitting: the space file, flags and overlay, the pruning reporter, trials whose worker
died, and the search loop's count (running trials count; diverging trials fail and the search goes on)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from tiny import REPO, TINY_CONFIG

from dapt_lightning.cli import main
from dapt_lightning.data.registry import benchmark_datasets, config_path
from dapt_lightning.experiments.claims import claim_record
from dapt_lightning.experiments.run_spec import nested
from dapt_lightning.experiments.tune import DEFAULT_SPACE, StudyFolder, load_space, open_study, search
from dapt_lightning.experiments.tune import objective as objective_module
from dapt_lightning.experiments.tune.command import check_seeds
from dapt_lightning.experiments.tune.fit import ReportToTrial, ValidateLastEpoch, fit_spec
from dapt_lightning.experiments.tune.objective import Objective
from dapt_lightning.experiments.tune.report import param_importances, write_figures, write_overlay
from dapt_lightning.experiments.tune.study import WORKER_ATTR, count_states, fail_trials_of_dead_workers

# The tests create trials with study.ask() (outside Study.optimize, which beats the heartbeat) to stage workers.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
SPACE_FILES = sorted((REPO / "configs" / "tune").glob("*.yaml"))


def write_space(tmp_path: Path, **space: object) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda path: path.name)
def test_every_shipped_space_file_loads(path: Path) -> None:
    space = load_space(path)
    assert space.params and isinstance(space.make_sampler(), optuna.samplers.TPESampler)


def test_default_space_spans_the_official_configs_on_log_scales() -> None:
    assert DEFAULT_SPACE in SPACE_FILES
    space = load_space(DEFAULT_SPACE)
    ranges = {param.name: (param.low, param.high, param.log) for param in space.params}
    assert ranges == {
        "model.lr": (0.002, 20.0, True),
        "model.beta_v": (0.01, 100.0, True),
        "model.beta_t": (0.01, 10.0, True),
    }
    # Each range is exactly the span of the 11 benchmarks' official configs.
    benchmarks = benchmark_datasets("fewshot")
    models = [yaml.safe_load(config_path(name).read_text())["model"]["init_args"] for name in benchmarks]
    assert len(models) == 11
    for name, (low, high, _) in ranges.items():
        values = [model[name.split(".")[1]] for model in models]
        assert (min(values), max(values)) == (low, high), name
    assert isinstance(space.make_pruner(), optuna.pruners.MedianPruner)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"sampler": {}}, "a search space has `params`"),
        ({"params": {}}, "params is empty"),
        ({"params": {"lr": {"low": 0.1, "high": 1.0}}}, "params.lr: name a `dapt fit` setting with its section"),
        ({"params": {"model.lr": {"low": 1.0, "high": 0.1}}}, "params.model.lr: needs numbers low < high"),
        ({"params": {"model.lr": {"low": 0.0, "high": 1.0, "log": True}}}, "a log scale needs low > 0"),
        ({"params": {"model.lr": {"low": 0.1, "hi": 1.0}}}, "must be a mapping with keys among"),
        ({"params": {"model.text_tokens": {"choices": [4], "low": 1}}}, "`choices` is a non-empty list"),
        ({"params": {"model.lr": {"low": 0.1, "high": 1.0, "type": "double"}}}, "`type` is float or int"),
        ({"params": {"model.lr": {"low": 0.1, "high": 1.0}}, "pruner": {"type": "asha"}}, "pruner.type must be one"),
        ({"params": {"model.lr": {"low": 0.1, "high": 1.0}}, "pruner": {"n_startup": 3}}, r"pruner \(median\):"),
        ({"params": {"model.lr": {"low": 0.1, "high": 1.0}}, "sampler": {"startup": 3}}, "sampler: .*TPESampler"),
        ({"params": {"model.lr": {"low": 0.1, "high": 1.0}}, "trials": 3}, "a search space has `params`"),
    ],
)
def test_space_errors_name_the_file_and_the_key(tmp_path: Path, space: dict, message: str) -> None:
    path = write_space(tmp_path, **space)
    with pytest.raises(ValueError, match=message) as error:
        load_space(path)
    assert str(path) in str(error.value)


def test_suggestions_stay_in_the_space(tmp_path: Path) -> None:
    space = load_space(
        write_space(
            tmp_path,
            params={
                "model.lr": {"low": 0.002, "high": 20.0, "log": True},
                "trainer.max_epochs": {"low": 2, "high": 5, "type": "int"},
                "model.text_tokens": {"choices": [4, 8, 16]},
            },
            sampler={"n_startup_trials": 5, "seed": 0},
        )
    )
    study = optuna.create_study(direction="maximize", sampler=space.make_sampler())
    for _ in range(12):
        trial = study.ask()
        settings = space.suggest(trial)
        assert list(settings) == ["model.lr", "trainer.max_epochs", "model.text_tokens"]  # the file's order
        assert 0.002 <= settings["model.lr"] <= 20.0 and settings["trainer.max_epochs"] in range(2, 6)
        assert settings["model.text_tokens"] in (4, 8, 16)
        study.tell(trial, math.log(settings["model.lr"]))


def test_settings_keep_their_exact_values_and_the_overlay_nests_them(tmp_path: Path) -> None:
    settings = {"model.lr": 0.1 + 0.2, "model.beta_v": 3.0e-7, "model.text_init": "a photo of a"}
    spec = fit_spec(["--config", "pets.yaml"], settings, tmp_path / "run", 1, trial=True, name="n", group="g")
    assert {key: spec.settings[key] for key in settings} == settings  # typed values, no text in between
    words = spec.command_line()
    for flag, text in (("--model.lr", "0.30000000000000004"), ("--model.beta_v", "3e-07")):
        assert words[words.index(flag) + 1] == text  # what --print_commands would show: exact too
    assert words[words.index("--model.text_init") + 1] == "a photo of a"
    assert nested({"model.lr": 1.0, "trainer.logger.init_args.project": "p"}) == {
        "model": {"init_args": {"lr": 1.0}},  # a method's settings are its init_args
        "trainer": {"logger": {"init_args": {"project": "p"}}},
    }
    path = write_overlay(tmp_path / "tuned" / "x.yaml", settings, ["line one", "line two"])
    text = path.read_text()
    assert text.startswith("# line one\n# line two\n")
    overlay = {"model": {"init_args": {"lr": 0.1 + 0.2, "beta_v": 3.0e-7, "text_init": "a photo of a"}}}
    assert yaml.safe_load(text) == overlay


def fake_trainer(epoch: int, max_epochs: int, acc: float, **state: object) -> SimpleNamespace:
    return SimpleNamespace(
        current_epoch=epoch,
        max_epochs=max_epochs,
        callback_metrics={"val/acc": acc},
        sanity_checking=state.get("sanity_checking", False),
        state=SimpleNamespace(fn=state.get("fn", "fit")),
        should_stop=False,
        check_val_every_n_epoch=10,
    )


def test_reporter_reports_progress_and_stops_a_fit_the_pruner_rejects() -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    reporter = ReportToTrial(trial, seed_index=1)  # the trial's second seed: its steps are 101-200
    good = fake_trainer(epoch=3, max_epochs=10, acc=0.7)
    reporter.on_validation_end(good, None)
    assert not reporter.pruned and not good.should_stop
    for ignored in (fake_trainer(0, 10, 0.0, sanity_checking=True), fake_trainer(0, 10, 0.0, fn="validate")):
        reporter.on_validation_end(ignored, None)
    poor = fake_trainer(epoch=4, max_epochs=10, acc=0.3)
    reporter.on_validation_end(poor, None)
    assert reporter.pruned and poor.should_stop
    frozen = study.trials[0]
    assert frozen.intermediate_values == {140: 0.7, 150: 0.3} and (reporter.value, reporter.epoch) == (0.3, 4)


def test_the_last_epoch_is_always_validated() -> None:
    monitor = ValidateLastEpoch()
    early, last = fake_trainer(3, 5, 0.0), fake_trainer(4, 5, 0.0)
    monitor.on_train_epoch_start(early, None)
    monitor.on_train_epoch_start(last, None)
    assert early.check_val_every_n_epoch == 10 and last.check_val_every_n_epoch == 1


def sqlite_study(tmp_path: Path, name: str = "s") -> tuple[optuna.Study, StudyFolder]:
    folder = StudyFolder(tmp_path / "tuned", name)
    folder.root.mkdir(parents=True)
    space = load_space(DEFAULT_SPACE)
    return open_study(f"sqlite:///{folder.database}", name, space, folder, heartbeat=60), folder


def test_a_dead_workers_trial_is_failed_and_its_folder_set_apart(tmp_path: Path) -> None:
    study, folder = sqlite_study(tmp_path)
    owners = {
        "dead": claim_record(dead_pid()),
        "alive": claim_record(),  # this process: still running its trial
        "elsewhere": {**claim_record(dead_pid()), "host": "another-node"},  # left to the heartbeat
    }
    for index, worker in enumerate(owners.values()):
        trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, worker)
        (folder.trial_dir(index) / "seed1").mkdir(parents=True)
        (folder.trial_dir(index) / "seed1" / "config.yaml").write_text("x")
    assert fail_trials_of_dead_workers(study, folder) == [0]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]
    assert not folder.trial_dir(0).exists() and (folder.failed_dir(0) / "seed1" / "config.yaml").is_file()
    summary = (folder.failed_dir(0) / "error.txt").read_text().split("\n")[0]
    worker = f"pid {owners['dead']['pid']} on {socket.gethostname()}"
    assert summary == f"its worker stopped without finishing ({worker}, no longer running)"
    assert fail_trials_of_dead_workers(study, folder) == []  # once


def test_search_counts_running_trials_and_goes_on_after_a_diverging_one(tmp_path: Path) -> None:
    study, folder = sqlite_study(tmp_path)
    busy = study.ask()  # another live worker's trial: it counts towards the target
    busy.set_user_attr(WORKER_ATTR, claim_record())
    seen = []

    def objective(trial: optuna.Trial, started) -> float:
        started()
        lr = trial.suggest_float("model.lr", 0.002, 20.0, log=True)
        if trial.number == 2:
            raise FloatingPointError("loss is NaN")
        return lr

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seen.append((trial.number, trial.state))

    counts = search(study, folder, objective, 4, on_trial, catch=(FloatingPointError,))
    assert (counts["complete"], counts["running"], counts["failed"]) == (3, 1, 1)
    assert seen == [(1, TrialState.COMPLETE), (2, TrialState.FAIL), (3, TrialState.COMPLETE), (4, TrialState.COMPLETE)]
    assert search(study, folder, objective, 4, on_trial) == counts  # nothing more to do

    # As many failures as trials asked for: something is wrong with every trial, and the worker says so.
    def failing(trial: optuna.Trial, started) -> float:
        started()
        raise FloatingPointError("loss is NaN")

    with pytest.raises(RuntimeError, match="5 trials of study 's' failed, as many as --trials asks for"):
        search(study, folder, failing, 5, on_trial, catch=(FloatingPointError,))
    assert count_states(study)["failed"] == 5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seed_everything", "3"], "--seed_everything is set by dapt tune for every fit: use --seeds"),
        (["--run.dir=x"], "--run.dir is set by dapt tune"),
        (["--seeds", "1,1"], "--seeds takes distinct comma-separated values"),
        (["--trails", "3"], "unknown option --trails; did you mean --trials?"),
        (["--trainer.devices", "2"], "--trainer.devices is set by dapt tune"),
        (["--trials", "0"], "--trials must be >= 1"),
        (["--config", "no/such.yaml"], "--config no/such.yaml does not exist"),
    ],
)
def test_tune_refuses_flags_it_sets_and_bad_values(extra: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--config", str(TINY_CONFIG), *extra])
    (line,) = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and line.startswith("dapt: error: ") and message in line


def test_a_study_is_joined_with_its_own_seeds(tmp_path: Path) -> None:
    study, _ = sqlite_study(tmp_path)
    check_seeds(study, [1, 2])
    check_seeds(study, [1, 2])
    with pytest.raises(ValueError, match="was started with --seeds 1,2: join it with the same seeds"):
        check_seeds(study, [3])


def test_figures_show_the_history_and_which_setting_matters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0), study_name="s")
    for _ in range(12):
        trial = study.ask()
        lr = trial.suggest_float("model.lr", 0.002, 20.0, log=True)
        trial.suggest_float("model.beta_v", 0.01, 100.0, log=True)
        study.tell(trial, 1 - abs(math.log10(lr) + 1) / 4)  # best at LR 0.1, whatever beta_v
    pruned = study.ask()
    pruned.suggest_float("model.lr", 0.002, 20.0, log=True)
    pruned.report(0.1, 50)
    study.tell(pruned, state=TrialState.PRUNED)
    importances, _ = param_importances(study)
    assert importances is not None and max(importances, key=importances.get) == "model.lr"
    written = write_figures(study, StudyFolder(tmp_path, "s"))
    assert set(written) == {"optimization_history", "param_importances"}
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in written.values())
    # One complete trial: a history, but no importances to tell.
    single = optuna.create_study(direction="maximize")
    single.enqueue_trial({"model.lr": 0.1})
    single.optimize(lambda trial: trial.suggest_float("model.lr", 0.002, 20.0, log=True), n_trials=1)
    assert param_importances(single) == (None, "1 complete trial(s); fANOVA needs 2 or more")
    assert set(write_figures(single, StudyFolder(tmp_path, "one"))) == {"optimization_history"}
    assert "[tune] no param_importances.png: 1 complete trial(s)" in capsys.readouterr().out  # said, not silent


def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    folder = StudyFolder(tmp_path, "s")
    with pytest.raises(ValueError, match=r"--storage nosuchdb://host/db: cannot open it .* give sqlite:///FILE"):
        open_study("nosuchdb://host/db", "s", load_space(DEFAULT_SPACE), folder, heartbeat=60)


def test_a_trial_fits_each_seed_and_scores_the_mean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The objective without fitting: each seed's `dapt fit` flags, folders, values and the pruned case."""
    calls = []
    accuracy = {"1": 0.5, "2": 0.7}
    prune = {"seed": None}  # the seed whose fit the pruner stops

    def fake_fit(spec, monitor):
        seed = str(spec.settings["seed_everything"])
        calls.append(spec)
        monitor.value = accuracy[seed]
        if seed == prune.get("diverge"):
            (folder.trial_dir(len(study.trials) - 1) / f"seed{seed}").mkdir(parents=True)
            raise FloatingPointError("train/loss_inter is NaN at step 3")
        monitor.pruned = seed == prune["seed"]
        return None, accuracy[seed]

    monkeypatch.setattr(objective_module, "fit", fake_fit)
    folder = StudyFolder(tmp_path / "tuned", "pets")
    space = load_space(DEFAULT_SPACE)
    objective = Objective(space, ["--config", "pets.yaml", "--data.num_shots", "4"], [1, 2], folder)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    assert trial.value == pytest.approx(0.6) and (
        trial.user_attrs["val_acc_seed1"],
        trial.user_attrs["val_acc_seed2"],
    ) == (0.5, 0.7)
    assert trial.user_attrs[WORKER_ATTR]["pid"] == os.getpid()
    for spec, seed in zip(calls, (1, 2), strict=True):
        settings = spec.settings
        assert spec.command == "fit" and spec.args == ("--config", "pets.yaml", "--data.num_shots", "4")
        assert settings["data.hold_out_test"] is True and settings["seed_everything"] == seed
        assert settings["run.dir"] == str(folder.trial_dir(0) / f"seed{seed}")
        assert settings["run.test_after_fit"] is False and settings["embedding_plots.enabled"] is False
        assert settings["model.lr"] == trial.params["model.lr"]
        assert (settings["run.name"], settings["run.group"]) == (f"tune-pets-trial0-seed{seed}", "tune-pets")
    # Pruned during its second seed: the trial ends there, pruned, its folder kept.
    prune["seed"] = "2"
    study.optimize(objective, n_trials=1)
    assert study.trials[1].state == TrialState.PRUNED and not folder.failed_dir(1).exists()
    # Diverged (a NaN loss): failed, its folder set apart with the error, and the search may go on.
    prune["diverge"] = "1"
    study.optimize(objective, n_trials=1, catch=(FloatingPointError,))
    assert study.trials[2].state == TrialState.FAIL and (folder.failed_dir(2) / "seed1").is_dir()
    error = (folder.failed_dir(2) / "error.txt").read_text()
    assert error.startswith("FloatingPointError: train/loss_inter is NaN at step 3\n") and "model.lr" in error
