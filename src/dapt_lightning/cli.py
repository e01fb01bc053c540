"""The ``dapt`` command: one table of subcommands, each a function of its argument list."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from dapt_lightning.arguments import UsageError
from dapt_lightning.data.cli import data_main
from dapt_lightning.experiments.demo import demo_main
from dapt_lightning.experiments.run import RunInterrupted, RunSpec, execute
from dapt_lightning.experiments.sweep.command import sweep_main
from dapt_lightning.experiments.trainer_cli import TRAINER_SUBCOMMANDS
from dapt_lightning.experiments.tune.command import tune_main
from dapt_lightning.inference.commands import export_main, serve_main


@dataclass(frozen=True)
class Subcommand:
    """One ``dapt`` subcommand: what it does (for ``dapt --help``) and the function that runs it."""

    help: str
    run: Callable[[list[str]], int]


SOME_SKIPPED = 3
"""The exit status of a ``dapt predict`` that classified every image it could read but skipped some."""


def _trainer_subcommand(name: str) -> Subcommand:
    def run(argv: list[str]) -> int:
        record = execute(RunSpec(name, args=tuple(argv)))
        return SOME_SKIPPED if record.skipped_images else 0

    return Subcommand(TRAINER_SUBCOMMANDS[name], run)


SUBCOMMANDS: dict[str, Subcommand] = {
    **{name: _trainer_subcommand(name) for name in TRAINER_SUBCOMMANDS},
    "data": Subcommand("check or download the benchmark datasets", data_main),
    "sweep": Subcommand("run a grid of experiments, or summarise their results as tables", sweep_main),
    "tune": Subcommand("search LR and dispersion weights on a dataset's few-shot validation split (Optuna)", tune_main),
    "export": Subcommand("write a checkpoint as an ONNX graph (images -> class logits)", export_main),
    "serve": Subcommand("serve a checkpoint over HTTP: POST an image, get its top classes (LitServe)", serve_main),
    "demo": Subcommand("zero-shot CLIP, CoOp, VPT and DAPT side by side on a procedural dataset, tiny CLIP", demo_main),
}
"""Every ``dapt`` subcommand, in the order ``dapt --help`` lists them."""

# Errors raised for bad settings, files or numbers: shown as one message, not a traceback (DAPT_DEBUG=1 shows it).
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, OSError, RuntimeError, FloatingPointError)


def usage() -> str:
    """The ``dapt --help`` text: every subcommand with its one-line description."""
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [f"  {name:<{width}}  {command.help}" for name, command in SUBCOMMANDS.items()]
    return "usage: dapt SUBCOMMAND [options]   (dapt SUBCOMMAND --help for its options)\n\nsubcommands:\n" + "\n".join(
        lines
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``dapt`` console script; tests call it with an argument list."""
    argv = list(sys.argv[1:] if args is None else args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    command = SUBCOMMANDS.get(argv[0])
    if command is None:
        print(f"dapt: unknown subcommand {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    try:
        status = command.run(argv[1:])
    except UsageError as error:
        print(f"dapt: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunInterrupted as error:
        print(f"dapt: interrupted ({error})", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        # The reader of our output went away (`dapt sweep FILE --print_commands | head`): nothing more to say.
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit, into the closed pipe
        raise SystemExit(0) from None
    except USER_ERRORS as error:
        if os.environ.get("DAPT_DEBUG"):
            raise
        print(f"dapt: error: {error}\n(set DAPT_DEBUG=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
