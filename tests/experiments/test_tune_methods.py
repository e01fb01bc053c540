"""`dapt tune` searches what the tuned method takes: its own space file, else the default space's settings that apply;
a space naming a setting the method lacks, or a method with nothing to search, is one line; a baseline tunes end to
end on generated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_datasets import make_fake_dataset
from tiny import REPO

from dapt_lightning.arguments import UsageError
from dapt_lightning.cli import main
from dapt_lightning.experiments.tune.request import parse_request
from dapt_lightning.experiments.tune.study import StudyFolder

PETS = str(REPO / "configs/oxfordpets.yaml")


def searched(argv: list[str]) -> list[str]:
    return [param.name for param in parse_request(argv).space.params]


def test_each_method_searches_its_own_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert searched(["--config", PETS]) == ["model.lr", "model.beta_v", "model.beta_t"]  # DAPT: the default space
    assert searched(["--config", PETS, "--model", "KgCoOp"]) == ["model.lr", "model.kg_weight"]  # its own file
    assert searched(["--config", PETS, "--model=TipAdapterF"]) == ["model.lr", "model.init_alpha"]
    cocoop = ["--config", PETS, "--config", str(REPO / "configs/methods/cocoop.yaml")]
    assert searched(cocoop) == ["model.lr"]  # the default space's that CoCoOp takes (no dispersion weights)


def test_settings_a_method_lacks_and_nothing_to_search_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    default = str(REPO / "configs/tune/default.yaml")
    with pytest.raises(UsageError, match=r"--space .*default.yaml: model.beta_v is not a setting of --model CoOp"):
        parse_request(["--config", PETS, "--model", "CoOp", "--space", default])
    with pytest.raises(UsageError, match="--model LinearProbe takes none of the default search space's settings"):
        parse_request(["--config", PETS, "--model", "LinearProbe"])


@pytest.mark.slow
def test_kgcoop_tunes_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    make_fake_dataset("oxford_pets", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    tiny = ["--model.clip_name", "dapt-tiny", "--model.pretrained", "null", "--trainer.max_epochs", "2"]
    tiny += ["--data.batch_size", "10", "--data.num_workers", "0", "--trainer.enable_progress_bar", "false"]
    tiny += ["--embedding_plots.enabled", "false", "--data.root", str(tmp_path / "data")]
    assert main(["tune", "--config", PETS, "--model", "KgCoOp", "--trials", "2", *tiny]) in (0, None)
    assert "KgCoOp's search space" in capsys.readouterr().out
    summary = json.loads(StudyFolder(Path("tuned"), "oxfordpets").summary.read_text())
    assert set(summary["settings"]) == {"model.lr", "model.kg_weight"}  # the overlay of the best trial
