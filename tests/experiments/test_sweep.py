"""`dapt sweep`: planning, printed commands, skipping and resuming runs, and the summary tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from tiny import REPO, SIZES, TINY_CONFIG, write_subset_dataset

from dapt_lightning.data.datasets.synthetic import FOLDER, write_synthetic_dataset
from dapt_lightning.experiments.runs import write_metrics
from dapt_lightning.experiments.sweep import command as sweep_command
from dapt_lightning.experiments.sweep import load_sweep, plan, summarize, sweep_main
from dapt_lightning.model.clip import load_clip


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def write_sweeps(tmp_path: Path, root: Path, weights: str) -> tuple[Path, Path]:
    """A 2 x 2 few-shot sweep (coop, dapt x seeds 1, 2; + zero-shot) with a test-only target, and a base-to-new one."""
    target = tmp_path / "subset.yaml"
    target.write_text(yaml.safe_dump({"data": {"dataset": "custom", "dataset_options": write_subset_dataset(root)}}))
    overrides = {
        "model.clip_name": "dapt-tiny",  # target configs name only their data
        "model.pretrained": weights,
        "data.root": str(root),
        "data.num_workers": 0,
        "trainer.max_epochs": 1,
        "trainer.logger": False,
        "trainer.enable_progress_bar": False,
        "embedding_plots.enabled": False,
    }
    common = {"shots": [1], "datasets": {"synthetic": str(TINY_CONFIG)}, "overrides": overrides}
    fewshot = tmp_path / "fewshot.yaml"
    fewshot.write_text(
        yaml.safe_dump(
            {
                **common,
                "runs_dir": str(tmp_path / "runs" / "fewshot"),
                "seeds": [1, 2],
                "methods": ["zeroshot", "coop", "dapt"],
                "targets": {"custom": str(target)},
            }
        )
    )
    base2new = tmp_path / "base2new.yaml"
    base2new.write_text(
        yaml.safe_dump(
            {
                **common,
                "runs_dir": str(tmp_path / "runs" / "base2new"),
                "protocol": "base2new",
                "seeds": [1],
                "methods": ["zeroshot", "dapt"],
            }
        )
    )
    return fewshot, base2new


def test_plan_layout_and_printed_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "runs_dir": "runs",
                "datasets": {"oxford_pets": "configs/oxfordpets.yaml"},
                "shots": [1, 16],
                "seeds": [1, 2, 3],
                "methods": ["zeroshot", "coop", "no_inter"],
                "variants": {"no_inter": {"method": "dapt", "overrides": {"model.beta_t": 0.0}}},
            }
        )
    )
    runs = plan(load_sweep(sweep))
    assert len(runs) == 1 + 2 * 2 * 3  # zero-shot once per dataset
    assert runs[1].steps[0].run_dir == Path("runs/oxford_pets/coop/1shots/seed1")
    assert sweep_main([str(sweep), "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(runs)
    assert lines[0].startswith("dapt test --config configs/oxfordpets.yaml") and "zeroshot" in lines[0]
    assert all(line.startswith("dapt fit --config configs/oxfordpets.yaml") for line in lines[1:])
    assert "--model.beta_t 0.0" in lines[-1] and "--run.label no_inter" in lines[-1]
    assert lines[-1].endswith("--ckpt_path last")  # a rerun of a job array resumes
    with pytest.raises(SystemExit):
        sweep_main([str(sweep), "--index", str(len(runs))])
    sweep.write_text(yaml.safe_dump({"datasets": {"x": "x.yaml"}, "methods": ["cocoop"]}))
    with pytest.raises(ValueError, match="method 'cocoop'"):
        load_sweep(sweep)


def _record(tmp: Path, dataset: str, method: str, shots: int, seed: int, acc: float, **extra: object) -> None:
    subsample = extra.pop("subsample", "all")
    trained_on = extra.pop("trained_on", dataset)
    folder = tmp / dataset / method / f"{shots}shots-{subsample}" / f"seed{seed}"
    record = {
        "dataset": dataset,
        "method": method,
        "shots": shots,
        "seed": seed,
        "subsample": subsample,
        "trained_on": {"dataset": trained_on} if trained_on else None,
        "test": {"test/acc": acc},
    }
    write_metrics(folder / "metrics.json", record)


def test_summary_tables_from_hand_made_records(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, acc in ((1, 0.80), (2, 0.90)):
        _record(runs, "oxford_pets", "dapt", 16, seed, acc)
        _record(runs, "dtd", "dapt", 16, seed, acc - 0.2)
        _record(runs, "oxford_pets", "dapt", 16, seed, 0.6, subsample="base")
        _record(runs, "oxford_pets", "dapt", 16, seed, 0.4, subsample="new")
        _record(runs, "imagenet", "dapt", 16, seed, 0.7)
        _record(runs, "imagenet_a", "dapt", 16, seed, 0.5, trained_on="imagenet")
    _record(runs, "oxford_pets", "zeroshot", 0, 1, 0.5, trained_on=None)
    written = summarize(runs, tmp_path / "results")
    rows = read_csv(written["fewshot_csv"])
    pets = next(r for r in rows if r["method"] == "dapt" and r["dataset"] == "oxford_pets")
    assert float(pets["mean"]) == pytest.approx(85.0) and float(pets["std"]) == pytest.approx(7.0710678, rel=1e-6)
    assert int(pets["n"]) == 2
    zero_shot = next(r for r in rows if r["method"] == "zeroshot" and r["dataset"] == "oxford_pets")
    assert float(zero_shot["mean"]) == pytest.approx(50.0) and zero_shot["shots"] == "16"
    average = next(r for r in rows if r["method"] == "dapt" and r["dataset"] == "average")
    assert float(average["mean"]) == pytest.approx((85.0 + 65.0 + 70.0) / 3)
    markdown = written["fewshot"].read_text()
    assert "| dapt | 70.00 ± 0.00 | 85.00 ± 7.07 | 65.00 ± 7.07 |" in markdown  # paper order: imagenet, pets, dtd

    b2n = read_csv(written["base2new_csv"])
    harmonic = next(r for r in b2n if r["dataset"] == "oxford_pets" and r["column"] == "H")
    assert float(harmonic["mean"]) == pytest.approx(2 * 60 * 40 / 100)
    dg = written["domain_generalisation"].read_text()
    assert "| method | imagenet (source) | imagenet_a | Target average |" in dg
    assert "| dapt | 70.00 ± 0.00 | 50.00 ± 0.00 | 50.00 |" in dg
    assert "16 shots" in written["ablation"].read_text()


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from safetensors.torch import save_file

    root = tmp_path / "data"
    write_synthetic_dataset(root / FOLDER, seed=0, image_size=64, sizes=SIZES)
    clip, _ = load_clip("dapt-tiny", None)
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    fewshot, base2new = write_sweeps(tmp_path, root, str(weights))

    assert sweep_main([str(fewshot)]) == 0
    assert sweep_main([str(base2new)]) == 0
    runs = tmp_path / "runs"
    dapt_run = runs / "fewshot" / "synthetic" / "dapt" / "1shots" / "seed2"
    metrics = json.loads((dapt_run / "metrics.json").read_text())
    assert metrics["kind"] == "fit" and metrics["seed"] == 2 and metrics["shots"] == 1
    assert (dapt_run / "checkpoints" / "last.ckpt").is_file()
    target = json.loads((runs / "fewshot" / "custom" / "dapt" / "1shots" / "seed2" / "metrics.json").read_text())
    assert target["trained_on"]["dataset"] == "synthetic" and target["num_classes"] == 5
    new = json.loads((runs / "base2new" / "synthetic" / "dapt" / "1shots-new" / "seed1" / "metrics.json").read_text())
    assert new["subsample"] == "new" and new["trained_on"]["subsample"] == "base" and new["num_classes"] == 18

    # Re-running skips every finished run without starting the CLI.
    original = sweep_command.cli_main

    def refuse(args: list[str]) -> None:
        raise AssertionError(f"finished run started again: {args}")

    monkeypatch.setattr(sweep_command, "cli_main", refuse)
    assert sweep_main([str(fewshot)]) == 0
    assert "skip finished" in capsys.readouterr().out

    # An interrupted run (checkpoint, no metrics.json) resumes from its last checkpoint.
    (dapt_run / "metrics.json").unlink()
    calls: list[list[str]] = []

    def record(args: list[str]) -> object:
        calls.append(args)
        return original(args)

    monkeypatch.setattr(sweep_command, "cli_main", record)
    assert sweep_main([str(fewshot), "--index", "4"]) == 0  # runs: zeroshot, coop s1, coop s2, dapt s1, dapt s2
    assert len(calls) == 1 and calls[0][:1] == ["fit"] and calls[0][-2:] == ["--ckpt_path", "last"]
    assert json.loads((dapt_run / "metrics.json").read_text())["epochs"] == metrics["epochs"]

    written = summarize(runs, tmp_path / "results")
    assert "| dapt |" in written["fewshot"].read_text() and "| coop |" in written["fewshot"].read_text()
    fewshot_rows = read_csv(written["fewshot_csv"])
    assert {(r["method"], r["n"]) for r in fewshot_rows if r["dataset"] == "synthetic"} == {
        ("zeroshot", "1"),
        ("coop", "2"),
        ("dapt", "2"),
    }
    assert "| dapt |" in written["base2new"].read_text()
    assert "synthetic (source) | custom" in written["domain_generalisation"].read_text()
    assert "| dapt |" in written["ablation"].read_text()
    assert sweep_main(["summarize", "--runs", str(runs), "--out", str(tmp_path / "results2")]) == 0
    assert (tmp_path / "results2" / "base2new.csv").is_file()


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_parse_and_name_existing_configs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    sweep = load_sweep(path)
    runs = plan(sweep)
    assert runs and all(run.steps for run in runs)
    configs = {arg for run in runs for step in run.steps for arg in step.args if arg.startswith("configs/")}
    missing = sorted(c for c in configs if not (REPO / c).is_file())
    assert not missing, f"{path.name} names configs that do not exist: {missing}"
