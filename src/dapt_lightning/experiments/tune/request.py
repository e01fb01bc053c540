"""What a ``dapt tune`` command line asks for: its own options (jsonargparse, as every subcommand) and the ``dapt
fit`` flags every fit gets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dapt_lightning.arguments import ArgumentParser, UsageError, comma_list, command_parser, parse, split_flags
from dapt_lightning.data.datamodule import NO_DATASET
from dapt_lightning.experiments.tune.method_space import method_space, tuned_method
from dapt_lightning.experiments.tune.space import DEFAULT_SPACE, SearchSpace
from dapt_lightning.experiments.tune.study import StudyFolder

DESCRIPTION = """Search the learning rate and DAPT's dispersion weights (or any settings of a space file) on a
dataset's few-shot validation split with Optuna (TPE, median pruning), then train the best settings once more and
test them. Every other flag (--config FILE, --data.num_shots 4, ...) is a `dapt fit` setting that goes to each fit,
in order. Start the same command in several terminals, or as several jobs with one --storage database, and the
workers share the study; rerun it after a kill and the study goes on."""

RESERVED = {
    "--seed_everything": "use --seeds",
    "--run.dir": "trials go to OUT/NAME/trials/: choose --out and --name",
    "--run.root": "trials go to OUT/NAME/trials/: choose --out and --name",
    "--run.test_after_fit": "trials are never tested; the best settings are, once, at the end",
    "--ckpt_path": "every trial starts from the config",
    "--trainer.devices": "a trial runs in one process; start one worker per device (README, dapt tune)",
    "--trainer.num_nodes": "a trial runs in one process; start one worker per device (README, dapt tune)",
}
"""``dapt fit`` flags that ``dapt tune`` sets for each fit, and what to do instead."""


def build_parser() -> ArgumentParser:
    """The parser of ``dapt tune``'s own options."""
    parser = command_parser("dapt tune", DESCRIPTION)
    parser.add_argument(
        "--space",
        type=str | None,
        default=None,
        help=f"search space YAML (default: configs/tune/<method>.yaml, else {DEFAULT_SPACE.name}'s that apply)",
    )
    parser.add_argument("--trials", type=int, default=30, help="finished trials the study needs")
    parser.add_argument("--seeds", default="1", help="fit each trial with these seeds, e.g. 1,2,3")
    parser.add_argument("--out", default="tuned", help="where OUT/NAME.yaml and the study folder go")
    parser.add_argument("--name", type=str | None, default=None, help="study name (default: the first config's name)")
    parser.add_argument(
        "--storage", type=str | None, default=None, help="Optuna storage URL (default sqlite:///OUT/NAME/study.db)"
    )
    parser.add_argument(
        "--heartbeat", type=int, default=60, help="seconds between a trial's heartbeats; silent twice that: failed"
    )
    return parser


OWN_OPTIONS = ("--space", "--trials", "--seeds", "--out", "--name", "--storage", "--heartbeat")


@dataclass(frozen=True)
class Request:
    """What a ``dapt tune`` command line asks for."""

    fit_args: list[str]
    seeds: list[int]
    space: SearchSpace
    folder: StudyFolder
    trials: int
    storage: str
    heartbeat: int


def _configs(fit_args: list[str]) -> list[str]:
    configs = [value for flag, value in zip(fit_args, fit_args[1:], strict=False) if flag == "--config"]
    return configs + [arg.split("=", 1)[1] for arg in fit_args if arg.startswith("--config=")]


def _check_fit_args(fit_args: list[str]) -> None:
    for arg in fit_args:
        flag = arg.split("=", 1)[0]
        if flag in RESERVED:
            raise UsageError(f"{flag} is set by dapt tune for every fit: {RESERVED[flag]}")
    for config in _configs(fit_args):
        if not Path(config).is_file():
            raise UsageError(f"--config {config} does not exist")


def _study_name(fit_args: list[str]) -> str:
    """The study's default name: the first config's file name, else the dataset's (``--data.dataset NAME``)."""
    configs = _configs(fit_args)
    if configs:
        return Path(configs[0]).stem
    explicit = dict(zip(fit_args, fit_args[1:], strict=False))
    explicit |= dict(arg.split("=", 1) for arg in fit_args if arg.startswith("--") and "=" in arg)
    if explicit.get("--data.dataset"):
        return explicit["--data.dataset"]
    raise UsageError(f"{NO_DATASET}; the study is named after it (or give --name)")


def parse_request(argv: list[str]) -> Request:
    """Read and check the command line; a bad option is a :class:`UsageError` line."""
    own, fit_args = split_flags(argv, OWN_OPTIONS)
    args = parse(build_parser(), own)
    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    if args.heartbeat < 1:
        raise UsageError(f"--heartbeat must be >= 1 second, got {args.heartbeat}")
    seeds = comma_list(args.seeds, int, "--seeds")
    _check_fit_args(fit_args)
    name = args.name or _study_name(fit_args)
    folder = StudyFolder(Path(args.out), name)
    storage = args.storage or f"sqlite:///{folder.database.resolve()}"
    space, line = method_space(tuned_method(fit_args, _configs(fit_args)), args.space)
    if line:
        print(line, flush=True)
    return Request(fit_args, seeds, space, folder, args.trials, storage, args.heartbeat)
