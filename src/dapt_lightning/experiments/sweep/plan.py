"""What a sweep runs: a grid of datasets x shots x seeds x methods, run in-process or printed for a job array.

A sweep file (``configs/sweeps/*.yaml``)::

    runs_dir: runs                       # output root: runs/<dataset>/<method>/<shots>shots/seed<seed>/
    protocol: fewshot                    # fewshot (all classes) or base2new (fit on base, test on base and new)
    datasets:                            # layout name -> base config (composed with --config) ...
      oxford_pets: configs/oxfordpets.yaml
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

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dapt_lightning.experiments.runs import METRICS_FILE, last_checkpoint
from dapt_lightning.methods import METHODS

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
