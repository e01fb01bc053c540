"""Which search space ``dapt tune`` uses for the method being tuned: the method's own file
(``configs/tune/<method>.yaml``), else the default space's settings that the method takes; and a space file that
names a setting the method does not take is refused in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dapt_lightning.arguments import UsageError
from dapt_lightning.data.registry import CONFIG_DIR
from dapt_lightning.experiments.tune.space import DEFAULT_SPACE, SearchSpace, load_space
from dapt_lightning.methods import DAPT, method_class
from dapt_lightning.methods.registry import Method, init_arguments


def tuned_method(fit_args: list[str], configs: list[str]) -> Method:
    """The method the fits train: the last ``--model``, else the last config's ``model``, else DAPT (the default)."""
    flagged = [value for flag, value in zip(fit_args, fit_args[1:], strict=False) if flag == "--model"]
    flagged += [arg.split("=", 1)[1] for arg in fit_args if arg.startswith("--model=")]
    reference: Any = flagged[-1] if flagged else None
    for config in configs if reference is None else []:
        model = (yaml.safe_load(Path(config).read_text()) or {}).get("model")
        if model is not None:
            reference = model.get("class_path") if isinstance(model, dict) else model
    if reference is None:
        return DAPT
    try:
        return method_class(str(reference))
    except ValueError as error:
        raise UsageError(str(error)) from None


def method_space(method: Method, space_file: str | None) -> tuple[SearchSpace, str]:
    """The space to search for ``method`` and a line saying which (empty when a file was given)."""
    if space_file is not None:
        space = load_space(space_file)
        _refuse_settings_not_taken(method, space, f"--space {space_file}")
        return space, ""
    own = CONFIG_DIR / "tune" / f"{method.name}.yaml"
    if own.is_file():
        return load_space(own), f"dapt tune: {method.__name__}'s search space, {own}"
    space = load_space(DEFAULT_SPACE)
    taken = init_arguments(method)
    kept = tuple(p for p in space.params if not p.name.startswith("model.") or p.name.split(".", 1)[1] in taken)
    if not kept:
        raise UsageError(
            f"--model {method.__name__} takes none of the default search space's settings "
            f"({', '.join(p.name for p in space.params)}); give --space FILE with the settings to search"
        )
    dropped = [p.name for p in space.params if p not in kept]
    line = f"dapt tune: searching {', '.join(p.name for p in kept)} of {DEFAULT_SPACE}"
    line += f" ({method.__name__} takes no {', '.join(dropped)})" if dropped else ""
    return SearchSpace(kept, space.sampler, space.pruner, space.path), line


def _refuse_settings_not_taken(method: Method, space: SearchSpace, where: str) -> None:
    taken = init_arguments(method)
    for param in space.params:
        if param.name.startswith("model.") and param.name.split(".", 1)[1] not in taken:
            raise UsageError(f"{where}: {param.name} is not a setting of --model {method.__name__}")
