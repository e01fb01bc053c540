"""The results a sweep left: every ``metrics.json`` under a folder, named as the sweep names its runs, and the
cells of the papers' tables (mean over seeds), with averages that refuse to mix datasets or seeds.

A test of a run's prompts lives in ``<run>/test/<dataset>[-<subsample>]/`` (``runs.evaluation_folder``): on
another dataset it is a transfer result, counted only in the transfer tables; on the run's own data with another
subsample (base2new's new classes) it is the run's own; a re-test like the run's own test is not counted twice.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dapt_lightning.callbacks.run_files import METRICS_FILE, read_metrics
from dapt_lightning.data.registry import benchmark_datasets
from dapt_lightning.methods import DAPT, list_methods, method_class

PAPER_DATASETS = benchmark_datasets("fewshot")
DG_TARGETS = benchmark_datasets("domain_shift")
METHOD_ORDER = tuple(list_methods())
COMPONENTS = ("text prompts", "visual prompts", "inter-dispersion", "intra-dispersion")
"""What a run's method and settings switch on: the ablation table's tick columns."""
EVALUATIONS = "test"
"""The sub-folder of a run that holds the tests of its prompts (``runs.evaluation_folder(run, "test", ...)``)."""


@dataclass(frozen=True)
class Result:
    """One evaluation: what was tested (``dataset``), with prompts trained on what (``source``), and its accuracy."""

    dataset: str
    source: str
    registered: str
    label: str
    method: str
    shots: int
    seed: int
    subsample: str
    transfer: bool
    acc: float
    components: tuple[bool, ...]
    path: Path


@dataclass(frozen=True)
class Cell:
    """A mean over seeds: ``per_seed`` holds one value per seed (empty for a value derived from means, like H)."""

    mean: float
    std: float | None
    seeds: tuple[int, ...]
    per_seed: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: dict[int, float]) -> Cell:
        """The cell of ``{seed: accuracy}``."""
        seeds = tuple(sorted(values))
        per_seed = tuple(values[s] for s in seeds)
        std = statistics.stdev(per_seed) if len(per_seed) > 1 else None
        return cls(statistics.fmean(per_seed), std, seeds, per_seed)

    def text(self, pm: str = "±") -> str:
        """``mean ± std (n=K)`` at 2 decimals (no ``± std`` with one seed); ``pm`` is the ± sign to write."""
        spread = "" if self.std is None else f" {pm} {self.std:.2f}"
        return f"{self.mean:.2f}{spread} (n={len(self.seeds)})"


def order(names: Iterable[str], preferred: tuple[str, ...]) -> list[str]:
    """``names`` in the papers' order (``preferred``), then the others alphabetically."""
    names = set(names)
    return [n for n in preferred if n in names] + sorted(n for n in names if n not in preferred)


def seeds_text(seeds: tuple[int, ...]) -> str:
    """``seed 1`` or ``seeds 1,2,3``, for the notes under a table."""
    return "seed " + ",".join(map(str, seeds)) if len(seeds) == 1 else "seeds " + ",".join(map(str, seeds))


def average(cells: dict[str, Cell | None]) -> tuple[Cell | None, str]:
    """The average over ``cells`` (name -> cell), seed by seed; None and why when a cell is missing or seeds differ."""
    if not cells:
        return None, "nothing to average"
    missing = [name for name, cell in cells.items() if cell is None]
    if missing:
        return None, f"no run on {', '.join(missing)}"
    present = {name: cell for name, cell in cells.items() if cell is not None}
    seed_sets = {cell.seeds for cell in present.values()}
    if len(seed_sets) > 1:
        return None, "seeds differ (" + "; ".join(f"{n}: {seeds_text(c.seeds)}" for n, c in present.items()) + ")"
    seeds = seed_sets.pop()
    per_seed = {seed: statistics.fmean(c.per_seed[i] for c in present.values()) for i, seed in enumerate(seeds)}
    return Cell.of(per_seed), ""


def harmonic(base: Cell | None, new: Cell | None) -> Cell | None:
    """H = 2 base new / (base + new) of the mean accuracies (CoCoOp), when both exist with the same seeds."""
    if base is None or new is None or base.seeds != new.seeds:
        return None
    total = base.mean + new.mean
    return Cell(2 * base.mean * new.mean / total if total else 0.0, None, base.seeds)


def _sweep_run(run_dir: Path) -> tuple[str, str] | None:
    """``(dataset, subsample)`` of a run folder in the sweep layout (``<dataset>/<label>/<K>shots[-sub]/seed<S>``)."""
    parts = run_dir.parts
    shots = re.fullmatch(r"\d+shots(?:-(\w+))?", parts[-2]) if len(parts) >= 4 else None
    if shots is None or not re.fullmatch(r"seed\d+", parts[-1]):
        return None
    return parts[-4], shots.group(1) or "all"


def _components(record: dict[str, Any]) -> tuple[bool, ...]:
    model = (record.get("settings") or {}).get("model") or {}
    try:
        method = method_class(model.get("class_path") or record["method"])
    except ValueError:
        return (False,) * len(COMPONENTS)
    settings = model.get("init_args") or model
    dispersion = issubclass(method, DAPT)
    inter = dispersion and settings.get("beta_t") != 0
    intra = dispersion and settings.get("beta_v") != 0
    return (method.uses_text_prompts, method.uses_visual_prompts, inter, intra)


def _result(path: Path, record: dict[str, Any], acc: float) -> Result | None:
    """What a ``metrics.json`` measured, named as its sweep names it; None for a repeat of a run's own test."""
    folder = path.parent
    subsample = record.get("subsample") or "all"
    trained = record.get("trained_on") or {}
    # A test of a run's prompts lives in <run>/test/<dataset>[-<subsample>]/ (runs.evaluation_folder).
    source_run = _sweep_run(folder.parent.parent) if folder.parent.name == EVALUATIONS else None
    own_run = _sweep_run(folder)
    if source_run is not None:
        source, trained_subsample = source_run
        dataset = folder.name.removesuffix(f"-{subsample}") if subsample != "all" else folder.name
        if dataset == source and subsample == trained_subsample:
            return None  # the run's own test again: counted once, from the run itself
        transfer = dataset != source
    elif own_run is not None:
        dataset = source = own_run[0]
        transfer = False
    else:  # not written by a sweep: what the record says
        dataset = record["dataset"]
        source = trained.get("dataset") or dataset
        transfer = source != dataset
    zero_shot = record["method"] == "zeroshot"
    return Result(
        dataset=dataset,
        source=source,
        registered=record["dataset"],
        label=record.get("label") or record["method"],
        method=record["method"],
        shots=0 if zero_shot else int(trained.get("num_shots") or record["shots"]),
        seed=int(trained.get("seed", record["seed"])),
        subsample=subsample,
        transfer=transfer,
        acc=acc,
        components=_components(record),
        path=path,
    )


def collect(runs_dir: str | Path) -> list[Result]:
    """Every ``metrics.json`` under ``runs_dir`` that has a test accuracy, as results (accuracy in percent).

    Raises:
        ValueError: two runs for the same cell and seed (e.g. two sweeps copied into one folder).
    """
    results, seen = [], {}
    for path in sorted(Path(runs_dir).rglob(METRICS_FILE)):
        record = read_metrics(path)
        acc = (record.get("test") or {}).get("test/acc")
        if acc is None:
            continue
        result = _result(path, record, 100.0 * acc)
        if result is None:
            continue
        key = (result.dataset, result.source, result.label, result.shots, result.subsample, result.seed)
        if key in seen:
            raise ValueError(
                f"dapt sweep summarize: two runs for the same table cell and seed: {seen[key]} and {path}; "
                "summarize one sweep's runs folder (--runs), or remove one of them"
            )
        seen[key] = path
        results.append(result)
    return results


def group_cells(results: Iterable[Result], key: Callable[[Result], tuple]) -> dict[tuple, Cell]:
    """The cells of ``results`` grouped by ``key``, each over the seeds of its group."""
    groups: dict[tuple, dict[int, float]] = defaultdict(dict)
    for result in results:
        groups[key(result)][result.seed] = result.acc
    return {k: Cell.of(v) for k, v in groups.items()}


def shot_counts(results: list[Result]) -> list[int]:
    """The trained shot counts of ``results``, or ``[0]`` when only zero-shot ran."""
    trained = sorted({r.shots for r in results if r.shots})
    return trained or ([0] if results else [])


class FewShot:
    """The few-shot results (all classes, each dataset's own runs): one cell per method, dataset and shot count."""

    def __init__(self, results: list[Result]) -> None:
        own = [r for r in results if not r.transfer and r.subsample == "all"]
        self.cells = group_cells(own, lambda r: (r.label, r.dataset, r.shots))
        self.datasets = order({r.dataset for r in own}, PAPER_DATASETS)
        self.labels = order({r.label for r in own}, METHOD_ORDER)
        self.shots = shot_counts(own)

    def cell(self, label: str, dataset: str, shots: int) -> Cell | None:
        """The cell of ``label`` on ``dataset`` at ``shots`` (zero-shot: its one run, at every shot count)."""
        return self.cells.get((label, dataset, shots)) or self.cells.get((label, dataset, 0))

    def untrained(self, label: str) -> bool:
        """True for zero-shot CLIP (runs at 0 shots): one value, shown at every shot count."""
        return any(key[0] == label and key[2] == 0 for key in self.cells)

    def labels_at(self, shots: int) -> list[str]:
        """The methods with at least one cell at ``shots`` (zero-shot included)."""
        return [label for label in self.labels if any(self.cell(label, d, shots) for d in self.datasets)]

    def average(self, label: str, shots: int) -> tuple[Cell | None, str]:
        """The average over every dataset of the table, or None and why."""
        return average({d: self.cell(label, d, shots) for d in self.datasets})


class BaseToNew:
    """The base-to-new results: base and new accuracy per method, dataset and shot count."""

    def __init__(self, results: list[Result]) -> None:
        own = [r for r in results if not r.transfer and r.subsample in ("base", "new")]
        self.cells = group_cells(own, lambda r: (r.label, r.dataset, r.shots, r.subsample))
        self.datasets = order({r.dataset for r in own}, PAPER_DATASETS)
        self.labels = order({r.label for r in own}, METHOD_ORDER)
        self.shots = shot_counts(own)

    def cell(self, label: str, dataset: str, shots: int, subsample: str) -> Cell | None:
        """The ``base`` or ``new`` cell of ``label`` on ``dataset`` at ``shots`` (zero-shot: at every shot count)."""
        return self.cells.get((label, dataset, shots, subsample)) or self.cells.get((label, dataset, 0, subsample))

    def average(self, label: str, shots: int) -> tuple[Cell | None, Cell | None, str]:
        """Base and new accuracy averaged over every dataset, or None and why."""
        base, why_base = average({d: self.cell(label, d, shots, "base") for d in self.datasets})
        new, why_new = average({d: self.cell(label, d, shots, "new") for d in self.datasets})
        reasons = [f"{part} {why}" for part, why in (("base:", why_base), ("new:", why_new)) if why]
        if base is not None and new is not None and base.seeds != new.seeds:
            reasons.append(f"H: base has {seeds_text(base.seeds)}, new {seeds_text(new.seeds)}")
        return base, new, "; ".join(reasons)
