"""``dapt sweep summarize``: the paper's tables (mean ± std over seeds) from every run's ``metrics.json``."""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from dapt_lightning.data.registry import benchmark_datasets
from dapt_lightning.experiments.runs import METRICS_FILE, read_metrics
from dapt_lightning.methods import METHODS

PAPER_DATASETS = benchmark_datasets("fewshot")
DG_TARGETS = benchmark_datasets("domain_shift")
METHOD_ORDER = tuple(METHODS)


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    count = len(values)
    mean = sum(values) / count
    # Sample standard deviation over seeds (0 for a single run).
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (count - 1)) if count > 1 else 0.0
    return mean, std, count


def _order(names: set[str], preferred: tuple[str, ...]) -> list[str]:
    return [n for n in preferred if n in names] + sorted(n for n in names if n not in preferred)


def _cell(stats: tuple[float, float, int] | None) -> str:
    return "-" if stats is None else f"{stats[0]:.2f} ± {stats[1]:.2f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def collect(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``metrics.json`` under ``runs_dir`` with a test accuracy, as records with ``acc`` in percent."""
    records = []
    for path in sorted(Path(runs_dir).rglob(METRICS_FILE)):
        record = read_metrics(path)
        acc = (record.get("test") or {}).get("test/acc")
        if acc is None:
            continue
        trained_on = record.get("trained_on") or {}
        record["acc"] = 100.0 * acc
        record["label"] = record.get("label") or record["method"]
        record["source"] = trained_on.get("dataset") or record["dataset"]
        records.append(record)
    return records


class Tables:
    """Mean ± std tables from run records, in the layout of the paper's tables."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def _group(self, keep: Any) -> dict[tuple, tuple[float, float, int]]:
        groups: dict[tuple, list[float]] = defaultdict(list)
        for r in self.records:
            key = keep(r)
            if key is not None:
                groups[key].append(r["acc"])
        return {k: _mean_std(v) for k, v in groups.items()}

    def _trained_shots(self, subsample: str) -> list[int]:
        return sorted({r["shots"] for r in self.records if r["method"] != "zeroshot" and r["subsample"] == subsample})

    def fewshot(self) -> tuple[list[dict[str, Any]], str]:
        """Per shot count: methods x datasets (+ average over datasets) on all classes of each dataset."""
        stats = self._group(
            lambda r: (
                (r["label"], r["dataset"], None if r["method"] == "zeroshot" else r["shots"])
                if r["subsample"] == "all" and r["source"] == r["dataset"]
                else None
            )
        )
        rows, text = [], []
        for shots in self._trained_shots("all"):
            labels = _order({k[0] for k in stats if k[2] in (shots, None)}, METHOD_ORDER)
            datasets = _order({k[1] for k in stats if k[2] in (shots, None)}, PAPER_DATASETS)
            table = []
            for label in labels:
                cells = [stats.get((label, d, shots)) or stats.get((label, d, None)) for d in datasets]
                present = [c[0] for c in cells if c is not None]
                average = sum(present) / len(present) if present else None
                table.append([label] + [_cell(c) for c in cells] + [f"{average:.2f}" if average is not None else "-"])
                for dataset, cell in zip(datasets, cells, strict=True):
                    if cell is not None:
                        rows.append(_row("fewshot", shots, label, dataset, "acc", cell))
                if average is not None:
                    rows.append(_row("fewshot", shots, label, "average", "acc", (average, 0.0, len(present))))
            text.append(
                f"### {shots} shots\n\n" + _markdown(["method", *datasets, f"Average ({len(datasets)})"], table)
            )
        return rows, "## Few-shot accuracy (%)\n\n" + "\n".join(text)

    def ablation(self) -> tuple[list[dict[str, Any]], str]:
        """Methods (and variants) x datasets at the largest shot count."""
        shots = self._trained_shots("all")
        if not shots:
            return [], "## Ablation\n\nNo trained runs.\n"
        largest = shots[-1]
        rows, text = self.fewshot()
        rows = [dict(r, table="ablation") for r in rows if r["shots"] == largest]
        section = text.split(f"### {largest} shots\n\n", 1)[1].split("\n### ", 1)[0]
        return rows, f"## Ablation: methods x datasets, {largest} shots, accuracy (%)\n\n{section}"

    def base2new(self) -> tuple[list[dict[str, Any]], str]:
        """Per dataset: base, new and harmonic-mean accuracy of every method (CoCoOp's layout), plus the average."""
        stats = self._group(
            lambda r: (
                (r["label"], r["dataset"], r["shots"] if r["method"] != "zeroshot" else None, r["subsample"])
                if r["subsample"] in ("base", "new") and r["source"] == r["dataset"]
                else None
            )
        )
        rows, text = [], []
        for shots in self._trained_shots("base"):
            labels = _order({k[0] for k in stats if k[2] in (shots, None)}, METHOD_ORDER)
            datasets = _order({k[1] for k in stats if k[2] in (shots, None)}, PAPER_DATASETS)
            averages: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            sections = []
            for dataset in [*datasets, "average"]:
                table = []
                for label in labels:
                    if dataset == "average":
                        base_values, new_values = averages[label]["base"], averages[label]["new"]
                        complete = len(base_values) == len(new_values) == len(datasets)
                        base = (sum(base_values) / len(base_values), 0.0, len(base_values)) if complete else None
                        new = (sum(new_values) / len(new_values), 0.0, len(new_values)) if complete else None
                    else:
                        base = stats.get((label, dataset, shots, "base")) or stats.get((label, dataset, None, "base"))
                        new = stats.get((label, dataset, shots, "new")) or stats.get((label, dataset, None, "new"))
                    if base is not None and new is not None:
                        averages[label]["base"].append(base[0])
                        averages[label]["new"].append(new[0])
                    harmonic = 2 * base[0] * new[0] / (base[0] + new[0]) if base and new and base[0] + new[0] else None
                    table.append([label, _cell(base), _cell(new), "-" if harmonic is None else f"{harmonic:.2f}"])
                    for column, value in (
                        ("base", base),
                        ("new", new),
                        ("H", (harmonic, 0.0, 1) if harmonic else None),
                    ):
                        if value is not None:
                            rows.append(_row("base2new", shots, label, dataset, column, value))
                sections.append(f"#### {dataset}\n\n" + _markdown(["method", "Base", "New", "H"], table))
            text.append(f"### {shots} shots\n\n" + "\n".join(sections))
        return rows, "## Base-to-new generalisation, accuracy (%)\n\n" + "\n".join(text)

    def domain_generalisation(self) -> tuple[list[dict[str, Any]], str]:
        """Source dataset and its test-only targets (ImageNet -> V2 / Sketch / A / R), methods as rows."""
        pairs = {(r["source"], r["dataset"]) for r in self.records if r["source"] != r["dataset"]}
        rows, text = [], []
        for source in sorted({s for s, _ in pairs}):
            targets = _order({t for s, t in pairs if s == source}, DG_TARGETS)
            stats = self._group(
                lambda r, source=source, targets=targets: (
                    (
                        r["label"],
                        r["dataset"],
                        None if r["method"] == "zeroshot" else r["shots"],
                    )
                    if r["subsample"] == "all"
                    and (
                        (r["dataset"] == source and r["source"] == source)
                        or (r["dataset"] in targets and (r["source"] == source or r["method"] == "zeroshot"))
                    )
                    else None
                )
            )
            shot_counts = sorted({k[2] for k in stats if k[2] is not None and k[1] in targets})
            for shots in shot_counts:
                labels = _order({k[0] for k in stats if k[2] in (shots, None)}, METHOD_ORDER)
                table = []
                for label in labels:
                    cells = [stats.get((label, d, shots)) or stats.get((label, d, None)) for d in [source, *targets]]
                    target_means = [c[0] for c in cells[1:] if c is not None]
                    average = sum(target_means) / len(target_means) if len(target_means) == len(targets) else None
                    table.append([label] + [_cell(c) for c in cells] + ["-" if average is None else f"{average:.2f}"])
                    for dataset, cell in zip([source, *targets], cells, strict=True):
                        if cell is not None:
                            rows.append(_row("domain_generalisation", shots, label, dataset, "acc", cell, source))
                header = ["method", f"{source} (source)", *targets, "Target average"]
                text.append(f"### {source}, {shots} shots\n\n" + _markdown(header, table))
        return rows, "## Domain generalisation, accuracy (%)\n\n" + ("\n".join(text) or "No test-only target runs.\n")


def _row(table: str, shots: int, label: str, dataset: str, column: str, stats: tuple, source: str = "") -> dict:
    mean, std, count = stats
    return {
        "table": table,
        "shots": shots,
        "method": label,
        "dataset": dataset,
        "source": source,
        "column": column,
        "mean": mean,
        "std": std,
        "n": count,
    }


def summarize(runs_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write ``fewshot``, ``ablation``, ``base2new`` and ``domain_generalisation`` as ``.csv`` and ``.md``."""
    import csv

    tables = Tables(collect(runs_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in ("fewshot", "ablation", "base2new", "domain_generalisation"):
        rows, markdown = getattr(tables, name)()
        md_path, csv_path = out / f"{name}.md", out / f"{name}.csv"
        md_path.write_text(markdown)
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=["table", "shots", "method", "dataset", "source", "column", "mean", "std", "n"]
            )
            writer.writeheader()
            writer.writerows(rows)
        written[name] = md_path
        written[f"{name}_csv"] = csv_path
    return written


def summarize_main(argv: list[str]) -> int:
    """``dapt sweep summarize --runs runs --out results``."""
    parser = argparse.ArgumentParser(
        prog="dapt sweep summarize", description="Mean ± std tables from metrics.json files"
    )
    parser.add_argument("--runs", default="runs", help="folder searched for metrics.json files (default: runs)")
    parser.add_argument("--out", default="results", help="where the .csv and .md tables go (default: results)")
    args = parser.parse_args(argv)
    records = collect(args.runs)
    if not records:
        print(f"dapt sweep summarize: no metrics.json with a test accuracy under {args.runs}", file=sys.stderr)
        return 1
    written = summarize(args.runs, args.out)
    print(f"{len(records)} runs -> " + ", ".join(str(p) for p in written.values()))
    return 0
