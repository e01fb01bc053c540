"""The methods by name: a dict plus a decorator, and one lookup that takes a short name, a class name or a path.

Every built-in method registers itself with :func:`register_method`; a user's method class works everywhere by its
import path (``--model my_package.MyMethod``) and may register itself to be listed and named like the built-ins.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, TypeVar

import lightning as L

from dapt_lightning.checkpoint import CheckpointFileError

Method = type[L.LightningModule]
"""A method class: a subclass of ``methods.base.CLIPMethod`` (which imports this module, so not named here)."""


M = TypeVar("M", bound=type)

_METHODS: dict[str, Method] = {}


def register_method(cls: M) -> M:
    """Register a method class under its short ``name`` (``dapt``); a class decorator.

    Raises:
        ValueError: the class has no ``name``, or another class holds that name.
    """
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"{cls.__qualname__} needs a short `name` (a class attribute) to be registered")
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(f"method name {name!r} is taken by {class_path(_METHODS[name])}; give {cls.__name__} another")
    _METHODS[name] = cls
    return cls


def list_methods() -> list[str]:
    """The short names of the registered methods, in registration order (the order of result tables)."""
    return list(_METHODS)


def registered_methods() -> list[Method]:
    """The registered method classes, in registration order."""
    return list(_METHODS.values())


def class_path(cls: type) -> str:
    """``module.QualName`` of a class, as YAML's ``class_path`` names it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def setting_name(cls: type) -> str:
    """How ``--model`` names a method class: a built-in by its class name (``DAPT``), any other by its import path
    (it may not be imported where the setting is read)."""
    return cls.__name__ if cls.__module__.startswith("dapt_lightning.methods.") else class_path(cls)


def method_class(reference: str) -> Method:
    """The method class a short name (``dapt``), a class name (``DAPT``) or an import path names.

    Raises:
        ValueError: nothing by that name, or the path names no method class; the message lists the known names.
    """
    if reference in _METHODS:
        return _METHODS[reference]
    by_class = {cls.__name__: cls for cls in _METHODS.values()}
    if reference in by_class:
        return by_class[reference]
    known = ", ".join(f"{name} ({cls.__name__})" for name, cls in _METHODS.items())
    module_name, _, attribute = reference.rpartition(".")
    if module_name:
        try:
            found = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"method {reference!r} cannot be imported ({error}); known methods: {known}") from None
        # Told by what every method has (the registry cannot import the base class it registers)
        if isinstance(found, type) and issubclass(found, L.LightningModule) and hasattr(found, "build_model"):
            return found
        raise ValueError(f"{reference} is not a method class (a subclass of dapt_lightning.methods.CLIPMethod)")
    raise ValueError(f"unknown method {reference!r}; choose one of {known}, or give a class's import path")


def method_reference(checkpoint: dict[str, Any], path: str | Path) -> tuple[type, dict[str, Any]]:
    """The method class a checkpoint was trained with, and the settings to rebuild it (its recorded
    hyperparameters that the class takes).

    Format 1 checkpoints name the method in ``hyper_parameters["method"]``; their unset dispersion weights (None)
    are the defaults DAPT has now.
    """
    settings = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    record = checkpoint.get("method")
    reference = record.get("class_path") if isinstance(record, dict) else settings.pop("method", "dapt")
    try:
        method = method_class(str(reference))
    except ValueError as error:
        raise CheckpointFileError(f"{path}: {error}") from None
    if record is None:
        settings = {k: v for k, v in settings.items() if not (k in ("beta_v", "beta_t") and v is None)}
    accepted = init_arguments(method)
    return method, {k: v for k, v in settings.items() if k in accepted}


def init_arguments(cls: type) -> set[str]:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up the class hierarchy."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names |= {p.name for p in parameters if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self"}
