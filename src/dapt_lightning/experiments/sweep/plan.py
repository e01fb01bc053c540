"""What a sweep runs: a grid of datasets x shots x seeds x methods (and variants), each run in a folder of its own.

A sweep file (``configs/sweeps/*.yaml``)::

    runs_dir: runs                       # output root (layout below)
    protocol: fewshot                    # fewshot (all classes) or base2new (fit on base, test on base and new)
    datasets:                            # layout name -> base config (composed with --config) ...
      oxford_pets: configs/oxfordpets.yaml
      eurosat: {config: configs/eurosat.yaml, overrides: {data.num_workers: 2}}   # ... or with own overrides
    shots: [1, 2, 4, 8, 16]
    seeds: [1, 2, 3]
    methods: [zeroshot, coop, vpt, coop_vpt, dapt]
    variants:                            # extra "methods": a method plus overrides (ablations); every one runs
      dapt_inter_only: {method: dapt, overrides: {model.beta_v: 0.0}}
      dapt_big_lr: {method: dapt, overrides: {model.lr: 20}, skip: "diverges (NaN) at 16 shots"}   # not run
    method_configs:                      # a method's official settings, composed after each dataset's config
      kgcoop: configs/methods/kgcoop.yaml   # (a variant takes its method's unless it is named here itself)
      promptsrc: {default: configs/methods/promptsrc_fewshot.yaml, dtd: configs/methods/promptsrc_fewshot_late.yaml}
    targets:                             # fewshot only: test-only evaluations of every run's prompts
      imagenetv2: configs/imagenetv2.yaml
    overrides:                           # settings for every run, as dotted CLI keys
      trainer.precision: bf16-mixed

Every run is a fit in DIR tested after fitting (zero-shot: a test), followed by its test-only runs of
``DIR/checkpoints/last.ckpt``, each in a folder under DIR (where ``dapt test --ckpt_path`` puts them by default,
``runs.evaluation_folder``); each step is a :class:`RunSpec` (``experiments/run_spec.py``)::

    <runs_dir>/<dataset>/<method or variant>/<shots>shots[-base]/seed<seed>/   (zero-shot: 0shots, first seed)
        test/<dataset>-new/   base2new: the test on the new classes
        test/<target>/        the test on each target dataset (a target equal to the dataset is the run's own test)

A run folder with a ``metrics.json`` is finished and skipped; one with only ``last.ckpt`` resumes from it.
``dapt sweep summarize`` turns every ``metrics.json`` under a folder into the papers' tables.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dapt_lightning.callbacks.run_files import METRICS_FILE
from dapt_lightning.experiments.run_spec import RunSpec
from dapt_lightning.experiments.runs import evaluation_folder, last_checkpoint, run_folder
from dapt_lightning.methods import ZeroShotCLIP, list_methods, method_class
from dapt_lightning.methods.registry import setting_name

SWEEP_KEYS = {"runs_dir", "protocol", "datasets", "shots", "seeds", "methods", "variants", "targets", "overrides"}
SWEEP_KEYS |= {"method_configs"}
VARIANT_KEYS = {"method", "overrides", "skip"}
PROTOCOLS = ("fewshot", "base2new")


@dataclass
class Step:
    """One run of a sweep's grid point and the folder it fills.

    ``kind`` is ``fit`` (train, then test), ``test`` (zero-shot), ``new`` (base2new: the new classes) or
    ``transfer`` (another dataset).
    """

    spec: RunSpec
    run_dir: Path
    kind: str = "fit"

    @property
    def finished(self) -> bool:
        return (self.run_dir / METRICS_FILE).is_file()


@dataclass
class Run:
    """One grid point: a fit (or zero-shot test) and the test-only runs of its prompts, run in that order."""

    dataset: str
    label: str
    method: str
    shots: int
    seed: int
    subsample: str = "all"
    steps: list[Step] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        """The run's folder (its first step's); its test-only runs live below it."""
        return self.steps[0].run_dir

    @property
    def finished(self) -> bool:
        return all(step.finished for step in self.steps)

    @property
    def name(self) -> str:
        """``dataset label K shots[ base] seed S``, as ``--list`` and the logs print it."""
        part = "" if self.subsample == "all" else f" {self.subsample}"
        return f"{self.dataset} {self.label} {self.shots} shots{part} seed {self.seed}"

    def command(self, program: str = "dapt") -> str:
        """The shell line that runs every step in order."""
        return " && ".join(shlex.join(step.spec.command_line(program)) for step in self.steps)


def _config_entry(path: str | Path, where: str, entry: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and isinstance(entry.get("config"), str) and set(entry) <= {"config", "overrides"}:
        overrides = entry.get("overrides") or {}
        if isinstance(overrides, dict):
            return entry["config"], dict(overrides)
    raise ValueError(
        f"sweep {path}: {where} must be a config path or {{config: PATH, overrides: {{KEY: VALUE}}}}, got {entry!r}"
    )


def _dataset_of(config: str, name: str) -> str:
    """The dataset a target's config tests (its ``data.dataset``), else the target's name in the sweep file."""
    try:
        with open(config) as handle:
            data = (yaml.safe_load(handle) or {}).get("data") or {}
    except OSError:
        return name
    return str(data.get("dataset") or name)


def _check_list(path: str | Path, sweep: dict[str, Any], key: str, minimum: int) -> None:
    values = sweep[key]
    if not isinstance(values, list) or not values or not all(isinstance(v, int) and v >= minimum for v in values):
        raise ValueError(f"sweep {path}: '{key}' must be a list of integers >= {minimum}, got {values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"sweep {path}: '{key}' lists a value twice: {values!r}")


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep file: every error names the file and the key, and says what is allowed."""
    with open(path) as handle:
        sweep = yaml.safe_load(handle) or {}
    if not isinstance(sweep, dict):
        raise ValueError(f"sweep {path}: expected a mapping of {', '.join(sorted(SWEEP_KEYS))}")
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
    sweep["variants"] = sweep.get("variants") or {}
    sweep["targets"] = sweep.get("targets") or {}
    sweep["overrides"] = sweep.get("overrides") or {}
    sweep["method_configs"] = sweep.get("method_configs") or {}
    if sweep["protocol"] not in PROTOCOLS:
        raise ValueError(f"sweep {path}: protocol must be 'fewshot' or 'base2new', got {sweep['protocol']!r}")
    if sweep["protocol"] == "base2new" and sweep["targets"]:
        raise ValueError(
            f"sweep {path}: 'targets' needs protocol fewshot (transfer uses prompts trained on all classes); "
            "put the targets in a fewshot sweep"
        )
    _check_list(path, sweep, "shots", 1)
    _check_list(path, sweep, "seeds", 0)
    for key in ("datasets", "targets", "variants", "overrides", "method_configs"):
        if not isinstance(sweep[key], dict):
            raise ValueError(f"sweep {path}: '{key}' must be a mapping, got {sweep[key]!r}")
    for where in ("datasets", "targets"):
        for name, entry in sweep[where].items():
            _config_entry(path, f"{where}.{name}", entry)
    for name, entry in sweep["method_configs"].items():
        per_dataset = isinstance(entry, dict) and "default" in entry and all(isinstance(v, str) for v in entry.values())
        if not isinstance(entry, str) and not per_dataset:
            raise ValueError(
                f"sweep {path}: method_configs.{name} must be a config path, or a mapping of dataset names (and "
                f"'default') to config paths, got {entry!r}"
            )
    variants = sweep["variants"]
    methods = ", ".join(list_methods())
    for name, variant in variants.items():
        if name in list_methods():
            raise ValueError(f"sweep {path}: variants.{name} shadows the method {name!r}; give the variant a new name")
        if not isinstance(variant, dict) or not _is_method(variant.get("method")) or set(variant) - VARIANT_KEYS:
            raise ValueError(
                f"sweep {path}: variants.{name} must be {{method: one of {methods} (or a method class's import "
                f"path), overrides: {{...}}, skip: 'why it is not run' (optional)}}, got {variant!r}"
            )
        if "skip" in variant and not (isinstance(variant["skip"], str) and variant["skip"].strip()):
            raise ValueError(f"sweep {path}: variants.{name}.skip must say why the variant is not run")
    for name in sweep["methods"]:
        if name not in variants and not _is_method(name):
            raise ValueError(
                f"sweep {path}: method {name!r} is neither one of {methods} (or a method class's import path) nor "
                "defined under 'variants'"
            )
    if len(set(sweep["methods"])) != len(sweep["methods"]):
        raise ValueError(f"sweep {path}: 'methods' lists a method twice: {sweep['methods']!r}")
    _check_new_classes(path, sweep)
    return sweep


def _check_new_classes(path: str | Path, sweep: dict[str, Any]) -> None:
    """Refuse a method that cannot name unseen classes in a sweep that tests it on them."""
    tests_new_classes = "protocol base2new" if sweep["protocol"] == "base2new" else "'targets' (cross-dataset)"
    if sweep["protocol"] != "base2new" and not sweep["targets"]:
        return
    for name in sweep["methods"]:
        method = method_class(str(sweep["variants"].get(name, {}).get("method", name)))
        if not method.names_new_classes:
            raise ValueError(
                f"sweep {path}: method {name!r} ({method.__name__}) classifies only the classes it was trained on, "
                f"so {tests_new_classes} cannot test it on others; run it in a fewshot sweep without targets"
            )


def _is_method(name: Any) -> bool:
    try:
        method_class(str(name))
    except ValueError:
        return False
    return isinstance(name, str)


def skipped_variants(sweep: dict[str, Any]) -> dict[str, str]:
    """The variants the sweep file defines but does not run, with the reason it gives."""
    return {name: variant["skip"] for name, variant in sweep["variants"].items() if "skip" in variant}


def labels(sweep: dict[str, Any]) -> list[str]:
    """What runs, in order: the ``methods``, then every variant they do not list, less the skipped ones."""
    listed = [*sweep["methods"], *(name for name in sweep["variants"] if name not in sweep["methods"])]
    skipped = skipped_variants(sweep)
    return [name for name in listed if name not in skipped]


def _make_run(sweep: dict[str, Any], dataset: str, label: str, shots: int, seed: int) -> Run:
    """One run: its fit (zero-shot: its test), then the tests of its prompts (new classes, each target)."""
    dataset_config, dataset_overrides = _config_entry("", dataset, sweep["datasets"][dataset])
    variant = sweep["variants"].get(label, {})
    method = method_class(variant.get("method", label))
    method_config = sweep["method_configs"].get(label) or sweep["method_configs"].get(variant.get("method"))
    if isinstance(method_config, dict):  # the method's official settings differ between datasets
        method_config = method_config.get(dataset, method_config["default"])
    method_configs = (method_config,) if method_config else ()
    configs = (dataset_config, *method_configs)
    base2new = sweep["protocol"] == "base2new"
    subsample = "base" if base2new else "all"
    zero_shot = issubclass(method, ZeroShotCLIP)
    everywhere, variant_settings = dict(sweep["overrides"]), dict(variant.get("overrides") or {})
    common: dict[str, Any] = {"seed_everything": seed, "model": setting_name(method), "run.label": label}
    if not zero_shot:
        common["data.num_shots"] = shots
    folder = run_folder(Path(sweep["runs_dir"]), dataset, label, shots, seed, subsample)
    data = {"data.subsample": subsample} if base2new else {}
    own = {**everywhere, **dataset_overrides, **variant_settings}
    run = Run(dataset, label, method.name, shots, seed, subsample)
    if zero_shot:
        spec = RunSpec("test", configs=configs, settings={**common, **data, "run.dir": str(folder), **own})
        run.steps.append(Step(spec, folder, "test"))
    else:
        fit = {**common, **data, "run.dir": str(folder), "run.test_after_fit": True, **own, "ckpt_path": "last"}
        run.steps.append(Step(RunSpec("fit", configs=configs, settings=fit), folder, "fit"))
    prompts = {} if zero_shot else {"ckpt_path": str(last_checkpoint(folder))}
    if base2new:
        new_dir = evaluation_folder(folder, "test", dataset, "new")
        new = {**common, "data.subsample": "new", "run.dir": str(new_dir), **own, **prompts}
        run.steps.append(Step(RunSpec("test", configs=configs, settings=new), new_dir, "new"))
    for target, entry in sweep["targets"].items():
        if target == dataset:
            continue  # the run's own test
        target_config, target_overrides = _config_entry("", target, entry)
        target_dir = evaluation_folder(folder, "test", target)
        # The variant's settings shape the prompts the checkpoint holds; the source dataset's do not apply. The target
        # is named explicitly: a test of trained prompts keeps the checkpoint's own dataset unless told otherwise.
        settings = {**common, "data.dataset": _dataset_of(target_config, target), "run.dir": str(target_dir)}
        settings |= {**everywhere, **target_overrides, **variant_settings}
        spec = RunSpec("test", configs=(target_config, *method_configs), settings={**settings, **prompts})
        run.steps.append(Step(spec, target_dir, "transfer"))
    return run


def plan(sweep: dict[str, Any]) -> list[Run]:
    """Every run of a sweep loaded by :func:`load_sweep`, in a fixed order (the ``--index`` order)."""
    runs = []
    for dataset in sweep["datasets"]:
        for label in labels(sweep):
            method = method_class(sweep["variants"].get(label, {}).get("method", label))
            # Zero-shot CLIP depends on neither shots nor seed: one run per dataset, filed under 0 shots.
            if issubclass(method, ZeroShotCLIP):
                grid = [(0, sweep["seeds"][0])]
            else:
                grid = [(shots, seed) for shots in sweep["shots"] for seed in sweep["seeds"]]
            runs += [_make_run(sweep, dataset, label, shots, seed) for shots, seed in grid]
    return runs
