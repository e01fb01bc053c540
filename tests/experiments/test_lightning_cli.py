"""The LightningCLI of `dapt fit/test`: fit then test, bf16 on CPU, derived settings, every shipped YAML."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
import yaml
from tiny import DEMO_CONFIG, REPO, build, run_cli, tiny_args

from dapt_lightning.arguments import UsageError
from dapt_lightning.cli import main
from dapt_lightning.experiments.trainer_cli import DAPTCLI
from dapt_lightning.schedule import official_max_epochs

# Sweep specs (`dapt sweep`) list LightningCLI configs and search spaces (`dapt tune`, parsed by test_tune.py) list
# settings; neither is a LightningCLI config itself.
OTHER_FOLDERS = (REPO / "configs" / "sweeps", REPO / "configs" / "tune")
CLI_CONFIGS = sorted(
    path
    for path in {*REPO.glob("configs/*.yaml"), *REPO.glob("configs/**/*.yaml")}
    if not any(folder in path.parents for folder in OTHER_FOLDERS)
)


@pytest.mark.slow
def test_fit_then_test(synthetic_root: Path, tmp_path: Path) -> None:
    fit = run_cli(["fit", *tiny_args(synthetic_root, tmp_path / "fit", "--trainer.limit_train_batches", "2")])
    assert fit.trainer.current_epoch == 1 and fit.trainer.global_step == 2
    assert fit.model.model.classnames[0] == "red circle" and len(fit.model.model.classnames) == 24  # linked
    assert fit.datamodule.image_size == 64  # the tiny CLIP's input size, linked when the arguments were parsed
    assert fit.model.has_prototypes
    assert torch.isfinite(fit.trainer.callback_metrics["train/loss_epoch"])
    checkpoint = Path(fit.trainer.checkpoint_callback.best_model_path)  # the one kept file, named last.ckpt
    assert checkpoint == tmp_path / "fit" / "checkpoints" / "last.ckpt" and checkpoint.is_file()

    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path)]
    test = run_cli(["test", *tiny_args(synthetic_root, tmp_path / "test", *logger, "--ckpt_path", str(checkpoint))])
    assert torch.equal(test.model.model.text_prompt.txt_ctx, fit.model.model.text_prompt.txt_ctx)
    accuracy = float(test.trainer.callback_metrics["test/acc"])
    # The same accuracy, recomputed image by image from the trained model.
    model = fit.model.model.eval()
    correct = []
    with torch.no_grad():
        for images, labels, _ in fit.datamodule.test_dataloader():
            correct.append(model(images)[0].argmax(-1) == labels)
    assert accuracy == pytest.approx(torch.cat(correct).float().mean().item(), abs=1e-6)
    with open(Path(test.trainer.logger.log_dir) / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("test/acc")]
    assert [float(row["test/acc"]) for row in rows] == pytest.approx([accuracy])


@pytest.mark.slow
def test_main_entry_point_runs_fit(synthetic_root: Path, tmp_path: Path) -> None:
    main(["fit", *tiny_args(synthetic_root, tmp_path / "run", "--trainer.limit_train_batches", "1")])
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_bf16_mixed_on_cpu(synthetic_root: Path, tmp_path: Path) -> None:
    args = tiny_args(synthetic_root, tmp_path / "run", "--trainer.precision", "bf16-mixed")
    cli = run_cli(["fit", *args])
    assert cli.trainer.precision == "bf16-mixed"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss_epoch"])
    assert cli.model.model.text_prompt.txt_ctx.dtype == torch.float32  # fp32 master prompts
    assert torch.isfinite(cli.model.model.visual_prompt.vis_ctx).all()


def _instantiate(root: Path, tmp_path: Path, *extra: str) -> DAPTCLI:
    """Parse and instantiate (no subcommand, nothing runs) the tiny config with ``extra`` flags."""
    return build([*tiny_args(root, tmp_path / "run"), *extra])


@pytest.mark.parametrize(("shots", "epochs"), [(1, 50), (4, 100), (16, 200)])
def test_max_epochs_from_shots_and_seed_from_seed_everything(
    synthetic_root: Path, tmp_path: Path, shots: int, epochs: int
) -> None:
    extra = ["--trainer.max_epochs", "null", "--data.num_shots", str(shots), "--seed_everything", str(shots + 10)]
    cli = _instantiate(synthetic_root, tmp_path, *extra)
    assert cli.trainer.max_epochs == epochs
    assert cli.datamodule.seed == shots + 10
    assert cli.datamodule.num_shots == shots


def test_explicit_max_epochs_and_data_seed_win(synthetic_root: Path, tmp_path: Path) -> None:
    extra = ["--trainer.max_epochs", "3", "--seed_everything", "7", "--data.seed", "2"]
    cli = _instantiate(synthetic_root, tmp_path, *extra)
    assert cli.trainer.max_epochs == 3
    assert cli.datamodule.seed == 2


def test_official_max_epochs() -> None:
    assert [official_max_epochs("oxford_pets", k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert {official_max_epochs("imagenet", k) for k in (1, 2, 4, 8, 16)} == {50}


def _parse_only(config: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    """Parse ``config`` against the current code without building anything (``--print_config`` exits first)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(config), "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err[-2000:]
    return yaml.safe_load(captured.out)


def test_configs_found() -> None:
    assert DEMO_CONFIG in CLI_CONFIGS


@pytest.mark.parametrize("config", CLI_CONFIGS, ids=lambda path: str(path.relative_to(REPO / "configs")))
def test_every_shipped_config_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parsed = _parse_only(config, capsys)
    written = yaml.safe_load(config.read_text())
    # Every section the file sets is in the parsed result with the file's scalar values.
    sections = {"model": ("model", "init_args"), "data": ("data",)}
    for path in sections.values():
        written_section, parsed_section = written, parsed
        for part in path:
            written_section, parsed_section = (written_section or {}).get(part) or {}, parsed_section[part]
        for key, value in written_section.items():
            if not isinstance(value, dict | list):
                assert parsed_section[key] == value, f"{config.name}: {'.'.join(path)}.{key}"
    if "model" in written and "class_path" in written["model"]:
        assert parsed["model"]["class_path"] == written["model"]["class_path"]


def test_a_config_with_a_typo_is_refused_in_one_line_with_the_closest_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config["model"]["init_args"]["beta_vv"] = 1.0
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path)])
    assert exit_info.value.code == 2  # a bad command line or config: usage error
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dapt: error")]
    assert f"unknown setting --model.beta_vv (in {path}): DAPT takes no 'beta_vv'" in line
    assert "did you mean --model.beta_v?" in line
    with pytest.raises(UsageError, match=r"unknown setting --trainer.max_epocs .*did you mean --trainer.max_epochs\?"):
        run_cli(["fit", "--config", str(DEMO_CONFIG), "--trainer.max_epocs", "3"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "CoOpp"], "--model CoOpp: no such method; did you mean CoOp?"),
        (["--model", "my_package.Nope"], "--model my_package.Nope: cannot import it (No module named 'my_package')"),
        (["--model", "CoOp", "--model.beta_v", "1"], "unknown setting --model.beta_v: CoOp takes no 'beta_v'"),
        (["--model.method", "coop"], "--model.method is gone: methods are classes now. Select one with --model NAME"),
    ],
)
def test_a_method_or_a_setting_it_does_not_take_is_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as error:
        run_cli(["fit", "--config", str(DEMO_CONFIG), *argv])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_demo_lists_only_the_wandb_runs_it_wrote(tmp_path: Path) -> None:
    from dapt_lightning.experiments.demo import offline_wandb_runs_since

    old, new = tmp_path / "offline-run-20260101_000000-old", tmp_path / "offline-run-20260101_000001-new"
    old.mkdir()
    new.mkdir()
    os.utime(old, (1_000, 1_000))  # an earlier demo's run
    assert offline_wandb_runs_since(tmp_path, since=2_000) == [new]
    assert offline_wandb_runs_since(tmp_path / "missing", since=0) == []


def test_another_method_after_a_dataset_config_keeps_the_settings_it_takes(
    synthetic_root: Path, tmp_path: Path
) -> None:
    pets = REPO / "configs" / "oxfordpets.yaml"
    coop = build(["--config", str(pets), "--model", "CoOp", "--data.root", str(synthetic_root)])
    assert type(coop.model).__name__ == "CoOp" and coop.model.model is None  # nothing loaded before the run starts
    assert coop.model.hparams.lr == 0.02 and coop.model.hparams.text_tokens == 16  # the config's, which CoOp takes
    assert "beta_v" not in coop.model.hparams  # DAPT's weights are not CoOp's settings
    dapt = build(["--config", str(pets), "--data.root", str(synthetic_root)])
    assert type(dapt.model).__name__ == "DAPT" and dapt.model.hparams.beta_v == 10.0
