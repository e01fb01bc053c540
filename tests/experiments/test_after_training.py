"""After training, as a new user goes on: test with the README's command (a dataset config and --ckpt_path only) and
get the trained CLIP, the trained dataset and correct labels, from any working directory; one run per folder; no
orphaned sweep workers; tuning that reproduces; and one line, with nothing created, for each bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file
from tiny import REPO, TINY_CONFIG, read_metrics, run_cli

from dapt_lightning.arguments import UsageError
from dapt_lightning.cli import main
from dapt_lightning.experiments.claims import RUNNING_FILE, read_claim
from dapt_lightning.model.clip import load_clip

PETS = REPO / "configs" / "oxfordpets.yaml"


def dapt(args: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """The console command in a fresh process, in ``cwd``."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    command = [sys.executable, "-m", "dapt_lightning.cli", *args]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """The tiny CLIP's random weights as a file, the way a user trains on a local weights file."""
    clip, _ = load_clip("dapt-tiny", None)
    path = tmp_path / "weights" / "dapt-tiny.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return path


@pytest.mark.slow
def test_the_readme_test_command_uses_the_checkpoints_clip_and_data_from_anywhere(
    synthetic_root: Path, weights: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # Trained with a relative weights path, from the user's own folder.
    relative = os.path.relpath(weights, work)
    fit = ["fit", "--config", str(TINY_CONFIG), "--data.root", str(synthetic_root), "--model.pretrained", relative]
    result = dapt([*fit, "--run.test_after_fit", "true"], cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    run = work / "runs" / "synthetic" / "dapt" / "2shots" / "seed1"
    trained = read_metrics(run)

    # The README's test command: a dataset config (ViT-B/16 with OpenAI's weights on Oxford Pets, 16 shots) and the
    # checkpoint, from another working directory. The checkpoint's CLIP, data and settings are used, not the config's.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    checkpoint = run / "checkpoints" / "last.ckpt"
    started = time.time()
    result = dapt(["test", "--config", str(PETS), "--ckpt_path", str(checkpoint)], cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.time() - started < 120  # no download of OpenAI's weights was tried
    tested = read_metrics(run / "test" / "synthetic")
    assert tested["test"]["test/acc"] == trained["test"]["test/acc"]
    assert (tested["dataset"], tested["shots"], tested["seed"], tested["method"]) == ("synthetic", 2, 1, "dapt")
    assert tested["trained_on"] == {"dataset": "synthetic", "num_shots": 2, "seed": 1, "subsample": "all"}
    assert tested["clip"]["name"] == "dapt-tiny" and tested["clip"]["pretrained"] == str(weights)
    assert tested["settings"]["model"]["init_args"]["pretrained"] == str(weights)  # recorded absolute

    # Another dataset is explicit; the results say what the prompts were trained on and what they were tested on.
    subset = dapt(
        ["test", "--ckpt_path", str(checkpoint), "--data.dataset", "synthetic", "--data.num_shots", "1"], work
    )
    assert subset.returncode == 0, subset.stderr[-3000:]
    assert read_metrics(run / "test" / "synthetic")["shots"] == 1  # a flag wins over the record

    # The weights moved: one line naming the recorded file and the flag, no download tried; then the flag works.
    moved = tmp_path / "moved.safetensors"
    weights.rename(moved)
    result = dapt(["test", "--config", str(PETS), "--ckpt_path", str(checkpoint)], cwd=elsewhere)
    errors = [line for line in result.stderr.splitlines() if line.startswith("dapt: error")]
    assert result.returncode == 1 and len(errors) == 1
    assert str(weights) in errors[0] and "--model.pretrained" in errors[0]
    result = dapt(["test", "--ckpt_path", str(checkpoint), "--model.pretrained", str(moved)], cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_run_without_a_dataset_says_what_to_pass_and_creates_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"--data.dataset: no dataset given; name one"):
        run_cli(["test", "--model", "ZeroShotCLIP", "--model.clip_name", "dapt-tiny", "--model.pretrained", "null"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model.lr", "-1"], "--model.lr must be > 0, got -1"),
        (["--data.num_shots", "-2"], "--data.num_shots must be >= 1, or -1 for every training image, got -2"),
        (["--model.visual_tokens", "0"], "--model.visual_tokens must be >= 1, got 0"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag_before_any_folder(
    flags: list[str], message: str, synthetic_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(TINY_CONFIG), "--data.root", str(synthetic_root), *flags])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dapt: error")]
    assert exit_info.value.code == 1 and message in line
    assert list(tmp_path.iterdir()) == []  # no run folder, no W&B folder


def test_a_config_typo_names_the_file_and_the_closest_key(tmp_path: Path, capsys) -> None:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["model"]["init_args"]["beta_vv"] = 1.0
    typo = tmp_path / "mine.yaml"
    typo.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(TINY_CONFIG), "--config", str(typo)])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dapt: error")]
    assert exit_info.value.code == 2
    assert f"--model.beta_vv (in {typo})" in line and "did you mean --model.beta_v?" in line


@pytest.mark.slow
def test_one_run_per_folder_at_a_time(synthetic_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["fit", "--config", str(TINY_CONFIG), "--data.root", str(synthetic_root), "--run.dir", str(run)]
    slow = [*args, "--trainer.max_epochs", "40", "--trainer.limit_train_batches", "1"]
    first = subprocess.Popen(
        [sys.executable, "-m", "dapt_lightning.cli", *slow], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=None
    )
    try:
        deadline = time.time() + 120
        while read_claim(run) is None:
            assert time.time() < deadline and first.poll() is None, "the first fit never claimed its folder"
            time.sleep(0.1)
        second = dapt(args, cwd=tmp_path)
        (line,) = [line for line in second.stderr.splitlines() if line.startswith("dapt: error")]
        assert second.returncode == 1 and f"{run} is in use by another run (pid {first.pid} " in line
    finally:
        first.kill()
        first.wait()
    # The holder is gone (killed outright): its claim is stale, and the folder's run resumes.
    assert (run / RUNNING_FILE).exists()
    resumed = dapt([*slow, "--ckpt_path", "last"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (run / RUNNING_FILE).exists() and read_metrics(run)["kind"] == "fit"


@pytest.mark.slow
def test_a_sweep_killed_outright_leaves_no_worker_and_a_rerun_finishes_it(synthetic_root: Path, tmp_path: Path) -> None:
    sweep = {
        "runs_dir": str(tmp_path / "runs"),
        "datasets": {"synthetic": str(TINY_CONFIG)},
        "shots": [2],
        "seeds": [1, 2],
        "methods": ["coop"],
        "overrides": {
            "data.root": str(synthetic_root),
            "trainer.max_epochs": 25,
            "trainer.logger": {"class_path": "dapt_lightning.loggers.DAPTWandbLogger"},  # offline (WANDB_MODE)
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    parent = subprocess.Popen(
        [sys.executable, "-m", "dapt_lightning.cli", "sweep", str(path), "--workers", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    folders = [tmp_path / "runs" / "synthetic" / "coop" / "2shots" / f"seed{seed}" for seed in (1, 2)]
    deadline = time.time() + 180
    while not all((folder / "checkpoints" / "last.ckpt").exists() for folder in folders):
        assert time.time() < deadline and parent.poll() is None, "the workers never got going"
        time.sleep(0.2)
    workers = [read_claim(folder)["pid"] for folder in folders]
    parent.send_signal(signal.SIGKILL)
    output = parent.communicate()[0]
    deadline = time.time() + 30
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(_alive(pid) for pid in workers), f"workers {workers} outlived their sweep"
    assert output.count("wandb:") == 0  # the workers' console stays as quiet as a run in this process

    rerun = dapt(["sweep", str(path), "--workers", "2"], cwd=tmp_path, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert all(read_metrics(folder)["kind"] == "fit" for folder in folders)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.slow
def test_testing_a_finished_run_again_tests_it_again(synthetic_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_cli(["fit", "--config", str(TINY_CONFIG), "--data.root", str(synthetic_root), "--run.dir", str(run)])
    # The config without its seed_everything: Lightning would pick seed 0 and warn that it found none.
    config = yaml.safe_load(TINY_CONFIG.read_text())
    del config["seed_everything"]
    unseeded = tmp_path / "unseeded.yaml"
    unseeded.write_text(yaml.safe_dump(config))
    test = ["test", "--config", str(unseeded), "--data.root", str(synthetic_root)]
    test += ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    run_cli(test)
    first = (run / "test" / "synthetic" / "metrics.json").stat().st_mtime_ns
    again = dapt(test, cwd=tmp_path)  # not refused as "nothing to do": an evaluation runs again, its results replaced
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "test" / "synthetic" / "metrics.json").stat().st_mtime_ns > first
    assert "No seed found" not in again.stderr and "Seed set to 1" in again.stderr


@pytest.mark.slow
def test_a_fit_shorter_than_its_warm_up_says_so(synthetic_root: Path, tmp_path: Path) -> None:
    args = ["fit", "--config", str(TINY_CONFIG), "--data.root", str(synthetic_root), "--run.dir", str(tmp_path / "r")]
    result = dapt([*args, "--trainer.max_epochs", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--trainer.max_epochs 1 <= --model.warmup_epochs 1: every epoch is warm-up" in result.stderr


@pytest.mark.slow
def test_tuning_without_a_config_or_a_seed_gives_an_overlay_that_reproduces_its_best_trial(
    synthetic_root: Path, tmp_path: Path
) -> None:
    # No config at all (so no seed_everything): the dataset and the tiny run as flags, the trials with seed 3.
    flags = ["--data.dataset", "synthetic", "--data.root", str(synthetic_root), "--data.num_shots", "2"]
    flags += ["--data.batch_size", "8", "--data.num_workers", "0", "--model.clip_name", "dapt-tiny"]
    flags += ["--model.pretrained", "null", "--trainer.max_epochs", "2", "--trainer.logger", "false"]
    flags += ["--trainer.enable_progress_bar", "false", "--prototypes.use_cache", "false"]
    tune = dapt(["tune", *flags, "--seeds", "3", "--trials", "1"], cwd=tmp_path, timeout=600)
    assert tune.returncode == 0, tune.stdout[-2000:] + tune.stderr[-3000:]
    overlay = tmp_path / "tuned" / "synthetic.yaml"  # named after the dataset
    assert yaml.safe_load(overlay.read_text())["seed_everything"] == 3
    summary = yaml.safe_load((tmp_path / "tuned" / "synthetic" / "summary.json").read_text())

    refit = tmp_path / "refit"
    args = ["fit", *flags, "--config", str(overlay), "--run.dir", str(refit), "--trainer.check_val_every_n_epoch", "1"]
    result = dapt(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_metrics(refit)["seed"] == 3 and read_metrics(refit)["fit"]["val/acc"] == summary["val_acc"]


@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201 - a generator fixture
    """A mount point whose disk fills after ``size`` bytes (a tmpfs); skipped where mounting needs privileges."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        point = tmp_path / f"disk-{size}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True
        )
        if result.returncode != 0:
            pytest.skip(f"a full disk is simulated with a tmpfs mount, which needs root here: {result.stderr!r}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        # Lazily: a W&B service of the failed run may still hold a file there for a moment.
        subprocess.run(["umount", "--lazy", str(point)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize(("size", "written"), [("24k", "config.yaml"), ("40k", "checkpoint")])
def test_a_full_disk_is_one_line_naming_the_folder_and_the_way_out(
    size: str, written: str, synthetic_root: Path, tmp_path: Path, small_disk
) -> None:
    run = small_disk(size) / "run"
    args = ["fit", "--config", str(TINY_CONFIG), "--data.root", str(synthetic_root), "--run.dir", str(run)]
    args += ["--trainer.logger", "dapt_lightning.loggers.DAPTWandbLogger", "--trainer.max_epochs", "3"]
    result = dapt(args, cwd=tmp_path, WANDB_MODE="offline")
    errors = [line for line in result.stderr.splitlines() if line.startswith("dapt: error")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
    assert "is full" in errors[0] and "--run.dir DIR" in errors[0] and str(run) in errors[0]
    assert (written == "checkpoint") == ("could not write checkpoint" in errors[0])
    # No flood of tracebacks from log handlers that cannot write (W&B's debug log, the run's log) before it.
    assert len(result.stdout.splitlines()) + len(result.stderr.splitlines()) < 40
    config = run / "config.yaml"
    assert not config.exists() or config.stat().st_size > 0  # written whole or not at all
