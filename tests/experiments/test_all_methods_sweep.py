"""The shipped sweep of every method on the demo data runs each registered method and writes tables and a figure
with all of them (shortened here to one shot count and one epoch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tiny import REPO

from dapt_lightning.experiments.sweep import summarize, sweep_main
from dapt_lightning.methods import list_methods

pytestmark = pytest.mark.slow


def test_every_method_runs_in_one_sweep_and_every_table_row_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # the sweep names configs relative to the repository
    monkeypatch.setenv("DAPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    sweep = yaml.safe_load((REPO / "configs/sweeps/demo_methods.yaml").read_text())
    assert sweep["methods"] == list_methods()  # every registered method, in the tables' order
    sweep["runs_dir"] = str(tmp_path / "runs")
    sweep["shots"] = [2]
    sweep["overrides"] |= {"trainer.max_epochs": 1, "data.root": str(tmp_path / "data"), "data.num_workers": 0}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))

    assert sweep_main([str(path), "--workers", "1"]) == 0
    written = summarize(tmp_path / "runs", tmp_path / "results")
    table = written["fewshot"].read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == list_methods()  # after the header: one row per method, none missing
    assert (tmp_path / "results" / "fewshot.png").stat().st_size > 10_000
