"""What to run, as data: one ``dapt fit/validate/test/predict``, described by a :class:`RunSpec`.

Every way of running (the ``dapt`` command line, sweeps, tuning, the demo, plain Python) builds one and hands it to
``run.execute``; this module turns it into the CLI's parsed configuration, applying typed settings with
jsonargparse's own rules (a new ``model`` keeps the settings the new class takes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Command = Literal["fit", "validate", "test", "predict"]
COMMANDS: tuple[str, ...] = ("fit", "validate", "test", "predict")


@dataclass(frozen=True)
class RunSpec:
    """One run.

    Attributes:
        command: ``fit``, ``validate``, ``test`` or ``predict``.
        args: a person's own command-line words (``dapt fit ...``), applied first.
        configs: config files, composed in order after ``args`` (as repeated ``--config``).
        settings: dotted settings applied last, in order, with their Python values: ``{"model": "CoOp",
            "model.lr": 0.02, "data.num_shots": 4, "seed_everything": 1, "run.dir": "runs/x", "ckpt_path": "last"}``
            (``model.X`` is the selected method's setting X).
    """

    command: Command
    args: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise ValueError(f"a run's command is one of {', '.join(COMMANDS)}, got {self.command!r}")
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "configs", tuple(str(path) for path in self.configs))
        object.__setattr__(self, "settings", dict(self.settings))

    def with_settings(self, settings: Mapping[str, Any]) -> RunSpec:
        """This run with more settings, applied after its own (a key it has keeps its place, with the new value)."""
        return RunSpec(self.command, self.args, self.configs, {**self.settings, **settings})

    def without(self, key: str) -> RunSpec:
        """This run without one of its own settings."""
        return RunSpec(self.command, self.args, self.configs, {k: v for k, v in self.settings.items() if k != key})

    def command_line(self, program: str = "dapt") -> list[str]:
        """The words of the same run typed by a person (``dapt sweep --print_commands`` shows them)."""
        words = [program, self.command, *self.args]
        for path in self.configs:
            words += ["--config", path]
        for key, value in self.settings.items():
            words += [f"--{key}", _word(value)]
        return words


def _word(value: Any) -> str:
    """A setting's value as jsonargparse reads it back from the command line."""
    if isinstance(value, str):
        return value
    return json.dumps(value)  # true/false/null, numbers at full precision, lists and mappings


def parse_spec(parser: Any, spec: RunSpec) -> Any:
    """The parsed configuration of ``spec`` (the namespace LightningCLI parses from a command line).

    Args:
        parser: the LightningCLI's root parser (with its subcommands).
        spec: the run.
    """
    words = [spec.command, *spec.args]
    for path in spec.configs:
        words += ["--config", path]
    config = parser.parse_args(words)
    for key, value in spec.settings.items():
        config = parser.parse_object({spec.command: _nested(config[spec.command], key, value)}, cfg_base=config)
    return config


def config_path(key: str) -> list[str]:
    """Where a dotted setting sits in a config file: ``model.lr`` is the selected method's ``model.init_args.lr``
    (a method is a class: its settings are its ``init_args``); any other key is itself."""
    parts = key.split(".")
    if parts[0] == "model" and len(parts) > 1 and parts[1] not in ("class_path", "init_args"):
        return ["model", "init_args", *parts[1:]]
    return parts


def nested(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted settings in the shape of a config file: ``{"model.lr": 0.1}`` is ``{"model": {"init_args": {"lr":
    0.1}}}``."""
    tree: dict[str, Any] = {}
    for key, value in settings.items():
        *sections, leaf = config_path(key)
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return tree


def _nested(current: Any, key: str, value: Any) -> dict[str, Any]:
    """One setting, nested; a method setting carries the selected class's ``class_path`` (without it, jsonargparse
    would start from the base class)."""
    tree = nested({key: value})
    if config_path(key)[:2] == ["model", "init_args"]:
        tree["model"]["class_path"] = current.model.class_path
    return tree
