"""``dapt sweep``: a grid of datasets x shots x seeds x methods, run in-process or printed for a job array.

A sweep file (``configs/sweeps/*.yaml``)::

    runs_dir: runs                       # output root: runs/<dataset>/<method>/<shots>shots/seed<seed>/
    protocol: fewshot                    # fewshot (all classes) or base2new (fit on base, test on base and new)
    datasets:                            # layout name -> base config (composed with --config) ...
      oxford_pets: configs/oxford_pets.yaml
      eurosat: {config: configs/eurosat.yaml, overrides: {data.num_workers: 2}}   # ... or with own overrides
    shots: [1, 2, 4, 8, 16]
    seeds: [1, 2, 3]
    methods: [zeroshot, coop, vpt, coop_vpt, dapt]
    variants:                            # optional extra "methods": a method plus overrides (ablations)
      dapt_no_inter: {method: dapt, overrides: {model.beta_t: 0.0}}
    targets:                             # optional test-only evaluations of every trained checkpoint
      imagenetv2: configs/imagenetv2.yaml
    overrides:                           # settings for every run, as dotted CLI keys
      trainer.precision: bf16-mixed

Every run is a ``dapt fit --run.dir DIR --run.test_after_fit true`` (zero-shot: ``dapt test``), followed by its
test-only runs (base-to-new: the new classes; ``targets``: each target dataset) of ``DIR/checkpoints/last.ckpt``.
A run folder with a ``metrics.json`` is finished and skipped; one with only ``last.ckpt`` resumes from it.
``dapt sweep summarize`` turns every ``metrics.json`` under a folder into the paper's tables.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dapt_lightning.loggers import finish_wandb_runs
from dapt_lightning.methods import METHODS
from dapt_lightning.runs import METRICS_FILE, last_checkpoint, read_metrics

PAPER_DATASETS = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
METHOD_ORDER = ("zeroshot", "coop", "vpt", "coop_vpt", "dapt")
SWEEP_KEYS = {"runs_dir", "protocol", "datasets", "shots", "seeds", "methods", "variants", "targets", "overrides"}


@dataclass
class Step:
    """One ``dapt`` invocation and the run folder it fills."""

    args: list[str]
    run_dir: Path

    @property
    def finished(self) -> bool:
        return (self.run_dir / METRICS_FILE).is_file()


@dataclass
class Run:
    """One grid point: a fit (or zero-shot test) and the test-only runs of its checkpoint."""

    dataset: str
    method: str
    shots: int
    seed: int
    steps: list[Step] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(step.finished for step in self.steps)

    def command(self, program: str = "dapt") -> str:
        """The shell line that runs every step in order."""
        return " && ".join(shlex.join([program, *step.args]) for step in self.steps)


def _flags(overrides: dict[str, Any] | None) -> list[str]:
    flags = []
    for key, value in (overrides or {}).items():
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
        text = text.removesuffix("\n...").strip()
        flags += [f"--{key}", text]
    return flags


def _dataset_entry(name: str, entry: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and "config" in entry:
        return entry["config"], dict(entry.get("overrides") or {})
    raise ValueError(
        f"sweep: datasets.{name} must be a config path or {{config: ..., overrides: {{...}}}}, got {entry!r}"
    )


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep file (unknown keys, methods and protocols are errors that name the key)."""
    with open(path) as handle:
        sweep = yaml.safe_load(handle) or {}
    unknown = sorted(set(sweep) - SWEEP_KEYS)
    if unknown:
        raise ValueError(f"sweep {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(SWEEP_KEYS))}")
    for key in ("datasets", "methods"):
        if not sweep.get(key):
            raise ValueError(f"sweep {path}: '{key}' must list at least one entry")
    sweep.setdefault("runs_dir", "runs")
    sweep.setdefault("protocol", "fewshot")
    sweep.setdefault("shots", [16])
    sweep.setdefault("seeds", [1, 2, 3])
    if sweep["protocol"] not in ("fewshot", "base2new"):
        raise ValueError(f"sweep {path}: protocol must be 'fewshot' or 'base2new', got {sweep['protocol']!r}")
    variants = sweep.setdefault("variants", {}) or {}
    for name in sweep["methods"]:
        if name not in METHODS and name not in variants:
            raise ValueError(
                f"sweep {path}: method {name!r} is neither one of {', '.join(METHODS)} nor defined under 'variants'"
            )
    for name, variant in variants.items():
        if not isinstance(variant, dict) or variant.get("method") not in METHODS:
            raise ValueError(f"sweep {path}: variants.{name} needs 'method' (one of {', '.join(METHODS)})")
    return sweep


def _run_dir(root: Path, dataset: str, label: str, shots: int, seed: int, subsample: str = "all") -> Path:
    shots_part = f"{shots}shots" if subsample == "all" else f"{shots}shots-{subsample}"
    return root / dataset / label / shots_part / f"seed{seed}"


def plan(sweep: dict[str, Any]) -> list[Run]:
    """Every run of the sweep, in a fixed order (the ``--index`` order)."""
    root = Path(sweep["runs_dir"])
    variants = sweep.get("variants") or {}
    targets = sweep.get("targets") or {}
    base2new = sweep["protocol"] == "base2new"
    runs: list[Run] = []
    for dataset, entry in sweep["datasets"].items():
        config, dataset_overrides = _dataset_entry(dataset, entry)
        for label in sweep["methods"]:
            variant = variants.get(label, {})
            method = variant.get("method", label)
            extra = _flags(sweep.get("overrides")) + _flags(dataset_overrides) + _flags(variant.get("overrides"))
            zero_shot = method == "zeroshot"
            # Zero-shot CLIP depends on neither shots nor seed: one run per dataset, filed under 0 shots.
            grid = [(0, sweep["seeds"][0])] if zero_shot else [(k, s) for k in sweep["shots"] for s in sweep["seeds"]]
            for shots, seed in grid:
                common = ["--seed_everything", str(seed), "--model.method", method, "--run.label", label]
                if not zero_shot:
                    common += ["--data.num_shots", str(shots)]
                run = Run(dataset, label, shots, seed)
                subsample = "base" if base2new else "all"
                run_dir = _run_dir(root, dataset, label, shots, seed, subsample)
                data = ["--data.subsample", subsample] if base2new else []
                if zero_shot:
                    run.steps.append(
                        Step(["test", "--config", config, *common, *data, "--run.dir", str(run_dir), *extra], run_dir)
                    )
                else:
                    resume = ["--ckpt_path", "last"]
                    fit = [
                        "fit",
                        "--config",
                        config,
                        *common,
                        *data,
                        "--run.dir",
                        str(run_dir),
                        "--run.test_after_fit",
                        "true",
                    ]
                    run.steps.append(Step([*fit, *extra, *resume], run_dir))
                checkpoint = [] if zero_shot else ["--ckpt_path", str(last_checkpoint(run_dir))]
                if base2new:
                    new_dir = _run_dir(root, dataset, label, shots, seed, "new")
                    test = ["test", "--config", config, *common, "--data.subsample", "new", "--run.dir", str(new_dir)]
                    run.steps.append(Step([*test, *extra, *checkpoint], new_dir))
                for target, target_config in targets.items():
                    target_dir = _run_dir(root, target, label, shots, seed)
                    test = ["test", "--config", target_config, *common, "--run.dir", str(target_dir)]
                    run.steps.append(Step([*test, *_flags(sweep.get("overrides")), *checkpoint], target_dir))
                runs.append(run)
    return runs


def execute(run: Run) -> None:
    """Run the unfinished steps of ``run`` in this process (resuming a fit from its last checkpoint)."""
    from dapt_lightning.cli import cli_main

    for step in run.steps:
        if step.finished:
            print(f"[sweep] done already: {step.run_dir}", flush=True)
            continue
        args = list(step.args)
        if args[-2:] == ["--ckpt_path", "last"] and not last_checkpoint(step.run_dir).is_file():
            args = args[:-2]  # nothing to resume: start fresh (Lightning would only warn)
        print(f"[sweep] dapt {shlex.join(args)}", flush=True)
        cli = None
        try:
            cli = cli_main(args)
        finally:
            finish_wandb_runs(getattr(cli, "trainer", None))


def sweep_main(argv: list[str]) -> int:
    """``dapt sweep FILE [--print-commands | --index K | --list]`` and ``dapt sweep summarize``."""
    if argv and argv[0] == "summarize":
        return summarize_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="dapt sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", help="sweep file (configs/sweeps/*.yaml); `dapt sweep summarize -h` for tables")
    parser.add_argument("--print-commands", action="store_true", help="print one shell line per run (job arrays)")
    parser.add_argument("--index", type=int, default=None, help="run only run K (0-based; e.g. $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--list", action="store_true", help="list the runs with their index and status")
    args = parser.parse_args(argv)
    runs = plan(load_sweep(args.sweep))
    if args.print_commands:
        for run in runs:
            print(run.command())
        return 0
    if args.list:
        for index, run in enumerate(runs):
            status = "done" if run.finished else "todo"
            print(f"{index:4d}  {status}  {run.dataset} {run.method} {run.shots}shots seed{run.seed}")
        return 0
    if args.index is not None:
        if not 0 <= args.index < len(runs):
            parser.error(f"--index must be in [0, {len(runs) - 1}], got {args.index}")
        runs = [runs[args.index]]
    failed = []
    for run in runs:
        if run.finished:
            print(f"[sweep] skip finished: {run.dataset} {run.method} {run.shots}shots seed{run.seed}", flush=True)
            continue
        try:
            execute(run)
        except Exception:  # one broken run must not stop a night's sweep; it is reported at the end
            traceback.print_exc()
            failed.append(run)
    for run in failed:
        print(f"[sweep] FAILED: {run.command()}", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------------------------
# Tables


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
