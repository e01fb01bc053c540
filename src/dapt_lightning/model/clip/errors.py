"""The errors of loading a CLIP: a name, tag or file that cannot be used, and weights that cannot be had."""

from __future__ import annotations


class ClipWeightsUnavailableError(RuntimeError):
    """Pretrained weights could neither be found in the cache nor downloaded."""


class ClipLoadError(ValueError):
    """A CLIP name, tag or weights file that cannot be used."""


def first_line(error: BaseException) -> str:
    """The informative line of an error, for one-line messages (load_state_dict's first line is only a title)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    return f"{type(error).__name__}: {(lines or [''])[0][:200]}"
