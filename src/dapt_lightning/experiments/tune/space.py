"""What ``dapt tune`` searches: the settings, their ranges and scales, and the sampler and pruner (one YAML file).

A space file (``configs/tune/default.yaml`` is the default)::

    params:                                     # dotted `dapt fit` settings
      model.lr: {low: 0.002, high: 20.0, log: true}
      model.beta_v: {low: 0.01, high: 100.0, log: true}
      model.text_tokens: {choices: [4, 8, 16]}  # a list of values
      trainer.max_epochs: {low: 10, high: 50, type: int}
    sampler: {n_startup_trials: 10, seed: null} # TPE; its first n_startup_trials trials are random
    pruner: {type: median, n_startup_trials: 5, n_warmup_steps: 25}

The pruner compares trials at the same *progress* (a step is the percentage of training done when validation ran;
the second seed of a trial reports steps 101-200, and so on), so ``n_warmup_steps: 25`` means "never prune in the
first quarter of training", whatever the number of epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from dapt_lightning.data.registry import CONFIG_DIR

DEFAULT_SPACE = CONFIG_DIR / "tune" / "default.yaml"
"""The search space used without ``--space``: LR, beta_v and beta_t over the ranges of the official configs."""

SPACE_KEYS = {"params", "sampler", "pruner"}
PARAM_KEYS = {"low", "high", "log", "type", "choices"}
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}
STEPS_PER_SEED = 100
"""Pruning steps per seed: a step is the percentage of that seed's training done."""


@dataclass(frozen=True)
class Param:
    """One searched setting: a range (``low``..``high``, ``log`` scale, float or int) or a list of ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this setting (Optuna records it under the dotted name)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """A space file: the searched settings, TPE's settings and the pruner's."""

    params: tuple[Param, ...]
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's settings, ``{dotted key: value}``, in the file's order."""
        return {param.name: param.suggest(trial) for param in self.params}

    def make_sampler(self) -> optuna.samplers.TPESampler:
        """TPE with the file's settings. Without a ``seed``, each worker draws its own (with one seed, workers
        started together would propose the same first trials)."""
        try:
            return optuna.samplers.TPESampler(**self.sampler)
        except TypeError as error:
            raise ValueError(f"{self.path}: sampler: {error}; see optuna.samplers.TPESampler's arguments") from None

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """The file's pruner (``type``: median, percentile, threshold, hyperband or none) with its arguments."""
        settings = dict(self.pruner)
        kind = settings.pop("type", "median")
        if kind not in PRUNERS:
            raise ValueError(f"{self.path}: pruner.type must be one of {', '.join(PRUNERS)}, got {kind!r}")
        try:
            return PRUNERS[kind](**settings)
        except TypeError as error:
            raise ValueError(f"{self.path}: pruner ({kind}): {error}") from None


def _param(path: Path, name: str, spec: Any) -> Param:
    where = f"{path}: params.{name}"
    if "." not in name:
        raise ValueError(f"{where}: name a `dapt fit` setting with its section, e.g. model.{name}")
    example = "e.g. {low: 0.002, high: 20.0, log: true} or {choices: [4, 8, 16]}"
    if not isinstance(spec, dict) or not spec or set(spec) - PARAM_KEYS:
        raise ValueError(f"{where} must be a mapping with keys among {sorted(PARAM_KEYS)}, {example}; got {spec!r}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: `choices` is a non-empty list and comes alone, {example}")
        return Param(name, choices=tuple(choices))
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    kind = spec.get("type", "float")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not low < high:
        raise ValueError(f"{where}: needs numbers low < high, {example}; got low={low!r}, high={high!r}")
    if kind not in ("float", "int") or not isinstance(log, bool):
        raise ValueError(f"{where}: `type` is float or int and `log` true or false, got type={kind!r}, log={log!r}")
    if log and low <= 0:
        raise ValueError(f"{where}: a log scale needs low > 0, got {low}")
    return Param(name, low, high, log, kind == "int")


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a space file; errors name the file and the key, and say what is expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--space {path} does not exist; the default is {DEFAULT_SPACE}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or set(data) - SPACE_KEYS or not isinstance(data.get("params"), dict):
        raise ValueError(f"{path}: a search space has `params` (required), `sampler` and `pruner`; see {DEFAULT_SPACE}")
    if not data["params"]:
        raise ValueError(f"{path}: params is empty: list at least one setting to search")
    for key in ("sampler", "pruner"):
        if not isinstance(data.get(key) or {}, dict):
            raise ValueError(f"{path}: {key} must be a mapping of arguments, got {data[key]!r}")
    params = tuple(_param(path, name, spec) for name, spec in data["params"].items())
    space = SearchSpace(params, dict(data.get("sampler") or {}), dict(data.get("pruner") or {}), path)
    # A bad argument fails now, naming the file, not once trials have run.
    space.make_sampler()
    space.make_pruner()
    return space
