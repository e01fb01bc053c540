"""One argument style for every ``dapt`` subcommand: jsonargparse parsers, ``--snake_case`` options, and every bad
command line answered in one line that names the setting and the closest valid one (exit status 2)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import TypeVar

from jsonargparse import ActionYesNo, ArgumentError, ArgumentParser, Namespace

__all__ = [
    "ActionYesNo",
    "ArgumentParser",
    "UsageError",
    "argument_error_line",
    "command_parser",
    "comma_list",
    "parse",
    "split_flags",
]

T = TypeVar("T")


class UsageError(ValueError):
    """A bad command line (an unknown option, a value of the wrong type); ``dapt`` exits with status 2."""


def command_parser(prog: str, description: str | None = None) -> ArgumentParser:
    """A subcommand's parser: errors raise (see :func:`parse`) instead of printing the usage and exiting."""
    return ArgumentParser(
        prog=prog, description=description, exit_on_error=False, default_env=False, allow_abbrev=False
    )


def parse(parser: ArgumentParser, argv: list[str]) -> Namespace:
    """``parser.parse_args(argv)``, with an error as one :class:`UsageError` line naming the closest option."""
    try:
        return parser.parse_args(argv)
    except ArgumentError as error:
        raise UsageError(argument_error_line(str(error), _option_names(parser), parser.prog)) from None


def _option_names(parser: ArgumentParser) -> list[str]:
    names = [o.lstrip("-") for action in parser._actions for o in action.option_strings if o.startswith("--")]
    for action in parser._actions:  # subcommands' own options
        for name, sub in (getattr(action, "choices", None) or {}).items():
            if isinstance(sub, ArgumentParser):
                names += [name, *_option_names(sub)]
    return names


_UNKNOWN = (
    re.compile(r"(?:option '|arguments: --)([\w.]+)"),
    re.compile(r"Key \"([\w.]+)\" is not"),
)
_NESTED = re.compile(r"Parser key \"([\w.]+)\".*?Option '([\w.]+)' is not accepted", re.S)
_CLASS = re.compile(r"Problem with given class_path '([\w.]+)'")
_CHOICE = re.compile(r"invalid choice: '([^']+)' \(choose from (.+?)\)")


def argument_error_line(message: str, keys: Iterable[str], command: str = "dapt SUBCOMMAND") -> str:
    """One line for a command-line or config error: what is wrong, and the closest valid setting to an unknown one.

    Args:
        message: jsonargparse's error message.
        keys: every valid dotted setting, for the suggestion.
        command: how to get help (``dapt fit`` gives ``dapt fit --help``).
    """
    keys = sorted(set(keys))
    help_hint = f"`{command} --help` lists every setting"
    nested = _NESTED.search(message)
    if nested is not None:  # a subclass (a method) that does not take a setting
        group, option = nested.groups()
        owner = _CLASS.search(message)
        unknown = f"{group}.{option}"
        close = difflib.get_close_matches(unknown, keys, n=1, cutoff=0.8)
        who = f"{owner.group(1).rsplit('.', 1)[-1]} " if owner else ""
        hint = f"did you mean --{close[0]}?" if close else help_hint
        return f"unknown setting --{unknown}: {who}takes no {option!r}; {hint}"
    line = " ".join(message.split())
    choice = _CHOICE.search(line)
    if choice is not None:
        options = [c.strip(" '") for c in choice.group(2).split(",")]
        close = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"choose one of {', '.join(options)}"
        return f"{command}: unknown {choice.group(1)!r}; {hint}"
    for pattern in _UNKNOWN:
        unknown = pattern.search(line)
        if unknown is not None:
            close = difflib.get_close_matches(unknown.group(1), keys, n=1, cutoff=0.6)
            hint = f"did you mean --{close[0]}?" if close else help_hint
            return f"unknown setting --{unknown.group(1)} ({line}); {hint}"
    return f"{line} ({help_hint})"


def comma_list(text: str, kind: Callable[[str], T], option: str, choices: Iterable[str] | None = None) -> list[T]:
    """A comma-separated option (``--seeds 1,2,3``) as distinct values, or a :class:`UsageError` naming it."""
    allowed = list(choices) if choices is not None else None
    try:
        values = [kind(part.strip()) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated values, got {text!r}") from None
    bad = [value for value in values if allowed is not None and value not in allowed]
    if not values or bad or len(set(values)) != len(values):
        choose = f"; choose from {', '.join(allowed)}" if allowed else ""
        raise UsageError(f"{option} takes distinct comma-separated values{choose}; got {text!r}")
    return values


def split_flags(argv: list[str], own: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split a command line into a subcommand's own options (``own``: ``--trials``, ``--seeds``, ... with their
    values) and everything else, in order (``dapt tune`` and ``dapt demo`` pass the rest to every fit).

    Own options must be written in full; a flag that comes close to one of them is refused with the suggestion,
    not passed on (``--trails 30`` would otherwise reach the fit as a setting it does not know).
    """
    names = set(own)
    mine: list[str] = []
    rest: list[str] = []
    words = iter(argv)
    for word in words:
        flag = word.split("=", 1)[0]
        if flag in names or flag in ("-h", "--help"):
            mine.append(word)
            if "=" not in word and flag not in ("-h", "--help"):
                mine.append(next(words, ""))
            continue
        if flag.startswith("--") and "." not in flag:
            close = difflib.get_close_matches(flag, sorted(names), n=1, cutoff=0.75)
            if close:
                raise UsageError(f"unknown option {flag}; did you mean {close[0]}?")
        rest.append(word)
    return mine, rest
