"""The one line ``dapt fit/validate/test/predict`` says for a bad command line or config: a method that does not
exist or cannot be imported, a setting the selected method does not take (with the closest one it takes), a key of
a config file (naming the file), and the old ``--model.method``."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dapt_lightning.arguments import argument_error_line
from dapt_lightning.experiments.run_spec import config_path
from dapt_lightning.methods import CLIPMethod, registered_methods
from dapt_lightning.methods.registry import init_arguments, method_class

OLD_METHOD_KEY = "method"
"""The setting that chose a method before methods were classes."""
UNKNOWN_CLASS = re.compile(r"Expected a dot import path string: (\S+)")
FAILED_IMPORT = re.compile(
    r"Problem with given class_path '([\w.]+)':\s*(No module named [^\n]+|[^\n]*has no attribute[^\n]*)"
)
CLASS_PATH = re.compile(r"Problem with given class_path '([\w.]+)'")
UNKNOWN_SETTING = re.compile(r"^unknown setting --([\w.]+)")


def error_line(
    message: str, command: str, keys: Iterable[str], config_files: list[str], explicit: set[str] = frozenset()
) -> str:
    """One line for jsonargparse's ``message``.

    Args:
        message: the parse error.
        command: how to get help (``dapt fit``).
        keys: every valid dotted setting but the method's (those come from the selected method).
        config_files: the ``--config`` files given, in order, to say which one holds an unknown key.
        explicit: the settings given as flags (an unknown one among them is the flag's, not a file's).
    """
    keys = set(keys)
    if f"Option '{OLD_METHOD_KEY}' is not accepted" in message:
        return (
            "--model.method is gone: methods are classes now. Select one with --model NAME (DAPT, CoOp, VPT, "
            "CoOpVPT, ZeroShotCLIP) or, in YAML, model: {class_path: dapt_lightning.methods.DAPT, init_args: "
            "{...}} (README, Running experiments)"
        )
    unknown_method = UNKNOWN_CLASS.search(message)
    if unknown_method is not None and message.startswith('Parser key "model"'):
        names = [method.__name__ for method in registered_methods()]
        close = difflib.get_close_matches(unknown_method.group(1), names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        return (
            f"--model {unknown_method.group(1)}: no such method; {hint}choose one of {', '.join(names)}, or give "
            "a method class's import path (my_package.MyMethod)"
        )
    failed_import = FAILED_IMPORT.search(message)
    if failed_import is not None and message.startswith('Parser key "model"'):
        path, reason = failed_import.groups()
        return f"--model {path}: cannot import it ({reason.strip()}); is its package installed?"
    owner = CLASS_PATH.search(message)  # a setting the selected method does not take: suggest one it takes
    methods = [_method_or_none(owner.group(1))] if owner is not None else registered_methods()
    methods = [method for method in methods if method is not None] or registered_methods()
    keys |= {f"model.{name}" for method in methods for name in init_arguments(method)}
    line = argument_error_line(message, sorted(keys), command)
    unknown = UNKNOWN_SETTING.search(line)
    given = unknown is not None and unknown.group(1) in explicit
    where = config_file_setting(unknown.group(1), config_files) if unknown and not given else None
    return line.replace(f"--{unknown.group(1)}", f"--{unknown.group(1)} (in {where})", 1) if where else line


def config_file_setting(key: str, paths: list[str]) -> str | None:
    """The last of the config files ``paths`` that sets the dotted ``key`` (a method's setting also under its
    ``init_args``), or None."""
    import yaml

    for path in reversed(paths):
        try:
            node: Any = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        for parts in (key.split("."), config_path(key)):
            found = node
            for part in parts:
                found = found.get(part, KeyError) if isinstance(found, dict) else KeyError
            if found is not KeyError:
                return path
    return None


def _method_or_none(reference: str) -> type[CLIPMethod] | None:
    try:
        return method_class(reference)
    except ValueError:
        return None
