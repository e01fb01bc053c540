"""Class names given by a user: a list, a comma-separated string (``cat,dog``) or a text file with one per line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def read_classnames(value: str | Sequence[str], setting: str = "--model.classnames") -> list[str]:
    """The class names ``value`` gives, by label.

    Args:
        value: a list of names; a path to a text file (one name per line; blank lines and lines starting with
            ``#`` are skipped); or names separated by commas.
        setting: named in error messages.

    Raises:
        ValueError: no names, or a name given twice.
    """
    if isinstance(value, str):
        path = Path(value).expanduser()
        if path.is_file():
            lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
            names = [line for line in lines if line and not line.startswith("#")]
            source = f"{setting} file {path}"
        elif "," not in value and (path.suffix in (".txt", ".csv") or "/" in value):
            raise ValueError(f"{setting}: no file {path}; give a text file with one class name per line, or 'a,b,c'")
        else:
            names = [name.strip() for name in value.split(",") if name.strip()]
            source = setting
    else:
        names = [str(name).strip() for name in value]
        source = setting
    if not names:
        raise ValueError(f"{source}: no class names; give them as 'cat,dog,...' or a text file with one per line")
    seen: set[str] = set()
    twice = [name for name in names if name in seen or seen.add(name)]
    if twice:
        raise ValueError(f"{source}: {twice[0]!r} is given twice; every class needs a name of its own")
    return names
