"""`dapt sweep summarize` on hand-made metrics.json files: tables that cannot mislead, in the papers' layouts, as
Markdown, CSV and LaTeX; the few-shot figure; W&B logging."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
from matplotlib.collections import PolyCollection

from dapt_lightning.callbacks.run_files import write_metrics
from dapt_lightning.experiments.runs import evaluation_folder, run_folder
from dapt_lightning.experiments.sweep import collect, summarize, sweep_main
from dapt_lightning.experiments.sweep.figures import draw_fewshot
from dapt_lightning.experiments.sweep.results import FewShot

METHOD_OF = {"dapt_inter_only": "dapt", "dapt_intra_only": "dapt"}
BETAS = {"dapt_inter_only": (0.01, 0.0), "dapt_intra_only": (0.0, 10.0)}


def record(
    runs: Path,
    dataset: str,
    label: str,
    shots: int,
    seed: int,
    acc: float,
    subsample: str = "all",
    target: str | None = None,
    registered: str | None = None,
) -> Path:
    """Write the metrics.json a sweep run leaves (a transfer test under its source run when ``target`` is given)."""
    method = METHOD_OF.get(label, label)
    zero_shot = method == "zeroshot"
    trained_subsample = "base" if subsample == "new" else subsample
    folder = run_folder(runs, dataset, label, 0 if zero_shot else shots, seed, trained_subsample)
    if subsample == "new":
        folder = evaluation_folder(folder, "test", dataset, "new")
    if target:
        folder = evaluation_folder(folder, "test", target)
    beta_t, beta_v = BETAS.get(label, (0.01, 10.0))
    trained = {"dataset": dataset, "num_shots": shots, "seed": seed, "subsample": subsample}
    write_metrics(
        folder / "metrics.json",
        {
            "kind": "test" if target or zero_shot or subsample == "new" else "fit",
            "dataset": registered or target or dataset,
            "method": method,
            "label": label,
            "shots": shots,
            "seed": seed,
            "subsample": subsample,
            "trained_on": None if zero_shot else trained,
            "test": {"test/acc": acc / 100},
            "settings": {"model": {"method": method, "beta_t": beta_t, "beta_v": beta_v}},
        },
    )
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def row(markdown: str, label: str, section: str | None = None) -> list[str]:
    """The cells of ``label``'s row in a Markdown table (in ``### section`` when given)."""
    if section is not None:
        markdown = markdown.split(f"### {section}\n", 1)[1].split("\n### ", 1)[0]
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values)


@pytest.fixture
def fewshot_runs(tmp_path: Path) -> Path:
    """Few-shot runs on imagenet, oxford_pets and dtd, with holes, and transfer tests filed under their sources."""
    runs = tmp_path / "runs"
    accuracies = {"imagenet": (70.0, 72.0), "oxford_pets": (90.0, 86.0), "dtd": (60.0, 55.0)}
    for dataset, (first, second) in accuracies.items():
        record(runs, dataset, "zeroshot", 0, 1, first - 20)
        for shots, gain in ((1, -10.0), (16, 0.0)):
            record(runs, dataset, "coop", shots, 1, first + gain)
            record(runs, dataset, "coop", shots, 2, second + gain)
        record(runs, dataset, "dapt_inter_only", 16, 1, first + 1)
        record(runs, dataset, "dapt_inter_only", 16, 2, second + 1)
    record(runs, "imagenet", "dapt", 16, 1, 75.0)
    record(runs, "imagenet", "dapt", 16, 2, 74.0)
    record(runs, "oxford_pets", "dapt", 16, 1, 93.0)  # dapt: seed 2 missing on pets, no run on dtd
    # ImageNet prompts on oxford_pets (also a source) and on eurosat (not one): never few-shot columns.
    for seed, acc in ((1, 85.0), (2, 87.0)):
        record(runs, "imagenet", "coop", 16, seed, acc, target="oxford_pets")
        record(runs, "imagenet", "coop", 16, seed, acc - 40, target="eurosat")
    record(runs, "imagenet", "zeroshot", 0, 1, 30.0, target="eurosat")
    record(runs, "dtd", "coop", 16, 1, 99.0, target="dtd")  # `dapt test` of a run on its own data: not a 3rd value
    return runs


def test_fewshot_table_cells_seeds_and_honest_averages(fewshot_runs: Path, tmp_path: Path) -> None:
    written = summarize(fewshot_runs, tmp_path / "results")
    markdown = written["fewshot"].read_text()
    header = "| method | imagenet | oxford_pets | dtd | Average (3) |"  # CoOp's order; no transfer target column
    assert markdown.count(header) == 2 and "eurosat" not in markdown
    coop = row(markdown, "coop", "16 shots")
    assert coop[:3] == ["71.00 ± 1.41 (n=2)", "88.00 ± 2.83 (n=2)", "57.50 ± 3.54 (n=2)"]
    # The average is taken seed by seed: mean (70+90+60)/3 and (72+86+55)/3, std over those two.
    mean, std = mean_std([(70 + 90 + 60) / 3, (72 + 86 + 55) / 3])
    assert coop[3] == f"{mean:.2f} ± {std:.2f} (n=2)"
    assert row(markdown, "zeroshot", "16 shots") == ["50.00 (n=1)", "70.00 (n=1)", "40.00 (n=1)", "53.33 (n=1)"]
    assert row(markdown, "dapt", "16 shots") == ["74.50 ± 0.71 (n=2)", "93.00 (n=1)", "—", "—"]
    assert "dapt (no run on dtd)" in markdown
    one_shot = markdown.split("### 1 shots\n", 1)[1].split("\n### ", 1)[0]
    assert "| dapt |" not in one_shot and "| coop |" in one_shot  # dapt has no 1-shot runs: no empty row

    rows = read_csv(written["fewshot_csv"])
    pets = next(r for r in rows if (r["section"], r["method"], r["column"]) == ("16 shots", "coop", "oxford_pets"))
    assert (float(pets["mean"]), float(pets["std"]), pets["n"], pets["seeds"]) == (
        88.0,
        pytest.approx(2.828427),
        "2",
        "1 2",
    )
    single = next(r for r in rows if (r["section"], r["method"], r["column"]) == ("16 shots", "dapt", "oxford_pets"))
    assert single["std"] == "" and single["n"] == "1"
    averages = {r["method"] for r in rows if r["column"] == "Average (3)" and r["section"] == "16 shots"}
    assert averages == {"zeroshot", "coop", "dapt_inter_only"}  # never an average over a subset of the datasets

    latex = written["fewshot_tex"].read_text()
    assert "\\toprule" in latex and "dapt\\_inter\\_only & " in latex
    assert "71.00 $\\pm$ 1.41 (n=2)" in latex and "74.50 $\\pm$ 0.71 (n=2) & 93.00 (n=1) & -- & -- \\\\" in latex


def test_average_left_out_when_seeds_differ(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    record(runs, "oxford_pets", "vpt", 16, 1, 80.0)
    record(runs, "oxford_pets", "vpt", 16, 2, 82.0)
    record(runs, "dtd", "vpt", 16, 1, 60.0)
    written = summarize(runs, tmp_path / "results")
    markdown = written["fewshot"].read_text()
    assert row(markdown, "vpt")[-1] == "—"
    assert "vpt (seeds differ (oxford_pets: seeds 1,2; dtd: seed 1))" in markdown


def test_cross_dataset_table_sources_targets_average(fewshot_runs: Path, tmp_path: Path) -> None:
    written = summarize(fewshot_runs, tmp_path / "results")
    markdown = written["cross_dataset"].read_text()
    assert "| method | imagenet (source) | oxford_pets | eurosat | Average (2 targets) |" in markdown
    mean, std = mean_std([(85 + 45) / 2, (87 + 47) / 2])
    assert row(markdown, "coop") == [
        "71.00 ± 1.41 (n=2)",
        "86.00 ± 1.41 (n=2)",
        "46.00 ± 1.41 (n=2)",
        f"{mean:.2f} ± {std:.2f} (n=2)",
    ]
    assert row(markdown, "zeroshot") == ["50.00 (n=1)", "—", "30.00 (n=1)", "—"]  # no zero-shot test on pets
    assert written["domain_generalisation"].read_text().endswith("No runs for this table.\n")


def test_domain_generalisation_table(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    targets = {"imagenet_r": 76.0, "imagenetv2": 64.0, "imagenet_a": 50.0, "imagenet_sketch": 48.0}
    for seed in (1, 2):
        record(runs, "imagenet", "dapt", 16, seed, 71.0 + seed)
        for target, acc in targets.items():
            record(runs, "imagenet", "dapt", 16, seed, acc + seed, target=target)
    written = summarize(runs, tmp_path / "results")
    markdown = written["domain_generalisation"].read_text()
    header = (
        "| method | imagenet (source) | imagenetv2 | imagenet_sketch | imagenet_a | imagenet_r | Average (4 targets) |"
    )
    assert header in markdown
    assert row(markdown, "dapt")[-1] == f"{statistics.fmean(targets.values()) + 1.5:.2f} ± 0.71 (n=2)"
    assert "No runs for this table." in written["cross_dataset"].read_text()


def test_base2new_table_and_ablation_in_both_protocols(fewshot_runs: Path, tmp_path: Path) -> None:
    runs = fewshot_runs
    base_new = {"oxford_pets": (95.0, 97.0), "dtd": (80.0, 60.0)}
    for dataset, (base, new) in base_new.items():
        record(runs, dataset, "zeroshot", 0, 1, base - 5, subsample="base")
        record(runs, dataset, "zeroshot", 0, 1, new - 5, subsample="new")
        for label, gain in (("dapt", 0.0), ("dapt_intra_only", -1.0)):
            for seed in (1, 2):
                record(runs, dataset, label, 16, seed, base + gain + seed, subsample="base")
                record(runs, dataset, label, 16, seed, new + gain - seed, subsample="new")
    written = summarize(runs, tmp_path / "results")
    markdown = written["base2new"].read_text()
    assert markdown.index("### 16 shots, average over 2 datasets") < markdown.index("### 16 shots, oxford_pets")
    pets = row(markdown, "dapt", "16 shots, oxford_pets")
    assert pets == ["96.50 ± 0.71 (n=2)", "95.50 ± 0.71 (n=2)", f"{2 * 96.5 * 95.5 / (96.5 + 95.5):.2f} (n=2)"]
    base, new = (96.5 + 81.5) / 2, (95.5 + 58.5) / 2
    average = row(markdown, "dapt", "16 shots, average over 2 datasets")
    assert average == ["89.00 ± 0.71 (n=2)", "77.00 ± 0.71 (n=2)", f"{2 * base * new / (base + new):.2f} (n=2)"]
    assert row(markdown, "zeroshot", "16 shots, dtd")[:2] == ["75.00 (n=1)", "55.00 (n=1)"]

    ablation = written["ablation"].read_text()
    rows = [line.split("|")[1].strip() for line in ablation.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["method", "zeroshot", "coop", "dapt", "dapt_inter_only", "dapt_intra_only"]
    header = "| method | text prompts | visual prompts | inter-dispersion | intra-dispersion | 1 shots | 16 shots "
    assert header + "| Base (16 shots) | New (16 shots) | H (16 shots) |" in ablation
    # Which losses a variant used comes from its runs' settings (beta_v 0: no intra-dispersion).
    assert row(ablation, "dapt_inter_only")[:4] == ["✓", "✓", "✓", ""]
    assert row(ablation, "dapt_intra_only")[:4] == ["✓", "✓", "", "✓"]
    assert row(ablation, "coop")[:4] == ["✓", "", "", ""]
    few = row(markdown=written["fewshot"].read_text(), label="coop", section="16 shots")[3]
    assert row(ablation, "coop")[5] == few and row(ablation, "coop")[6:] == ["—", "—", "—"]  # no base2new runs
    assert row(ablation, "dapt_intra_only")[4:6] == ["—", "—"] and row(ablation, "dapt_intra_only")[6] != "—"
    assert "dapt_intra_only base-to-new" not in ablation and "dapt at 16 shots (no run on dtd)" in ablation


def test_duplicate_runs_for_one_cell_are_refused(fewshot_runs: Path, tmp_path: Path) -> None:
    copy = tmp_path / "runs" / "copy"
    record(copy, "dtd", "coop", 16, 1, 10.0)
    with pytest.raises(ValueError, match="two runs for the same table cell and seed") as error:
        collect(tmp_path / "runs")
    assert str(copy) in str(error.value)


def test_fewshot_figure_panels_lines_and_bands(fewshot_runs: Path, tmp_path: Path) -> None:
    fig = draw_fewshot(FewShot(collect(fewshot_runs)))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["imagenet", "oxford_pets", "dtd", "Average over 3 datasets"]
    pets, average = fig.axes[1], fig.axes[3]
    lines = {line.get_label(): line for line in pets.get_lines()}
    assert set(lines) == {"zeroshot", "coop", "dapt", "dapt_inter_only"}
    assert list(lines["coop"].get_xdata()) == [1, 16] and list(lines["coop"].get_ydata()) == [78.0, 88.0]
    assert lines["zeroshot"].get_linestyle() == "--"  # zero-shot CLIP: a level, not a curve
    assert len([c for c in pets.collections if isinstance(c, PolyCollection)]) == 2  # bands: coop, dapt_inter_only
    # The average panel draws only complete averages: dapt lacks dtd.
    assert {line.get_label() for line in average.get_lines()} == {"zeroshot", "coop", "dapt_inter_only"}
    written = summarize(fewshot_runs, tmp_path / "results")
    assert written["fewshot_png"] == tmp_path / "results" / "fewshot.png"
    assert written["fewshot_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summarize_command_and_wandb_logging(fewshot_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert sweep_main(["summarize", "--runs", str(fewshot_runs), "--out", str(out), "--wandb", "dapt-tests"]) == 0
    for name in ("fewshot", "base2new", "cross_dataset", "domain_generalisation", "ablation"):
        assert all((out / f"{name}.{suffix}").is_file() for suffix in ("md", "csv", "tex"))
    (run,) = (out / "wandb").glob("offline-run-*")  # WANDB_MODE=offline in the tests
    assert list((run / "files" / "media" / "images").rglob("fewshot*.png"))
    assert list((run / "files" / "media" / "table").rglob("fewshot*.table.json"))
    assert sweep_main(["summarize", "--runs", str(tmp_path / "nothing"), "--out", str(out)]) == 1


def test_harmonic_mean_needs_base_and_new_of_the_same_seeds(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in (1, 2):
        record(runs, "oxford_pets", "coop", 16, seed, 90.0 + seed, subsample="base")
    record(runs, "oxford_pets", "coop", 16, 1, 70.0, subsample="new")  # seed 2's new-class test is missing
    markdown = summarize(runs, tmp_path / "results")["base2new"].read_text()
    assert row(markdown, "coop", "16 shots, oxford_pets") == ["91.50 ± 0.71 (n=2)", "70.00 (n=1)", "—"]
    assert "H left out: coop (base seeds 1,2, new seed 1)." in markdown
    assert row(markdown, "coop", "16 shots, average over 1 datasets")[2] == "—"
    assert "Average left out: coop (H: base has seeds 1,2, new seed 1)." in markdown
