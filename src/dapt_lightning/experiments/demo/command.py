"""``dapt demo``: zero-shot CLIP, then CoOp, VPT and DAPT fitted and tested, on the synthetic dataset with the tiny
CLIP; their accuracies side by side, and DAPT's dispersion before and after tuning."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from dapt_lightning.data.registry import config_path
from dapt_lightning.experiments.demo.dispersion import Dispersion, dispersion_before_after
from dapt_lightning.experiments.demo.report import accuracy_table, dispersion_table
from dapt_lightning.experiments.lightning_cli import cli_main, quiet_console
from dapt_lightning.loggers import finish_wandb_runs
from dapt_lightning.methods import METHODS
from dapt_lightning.storage import atomic_write_bytes

DEMO_CONFIG = config_path("synthetic")
"""The synthetic dataset's config (``configs/demo.yaml``), which the demo runs."""
DEFAULT_METHODS = ("zeroshot", "coop", "vpt", "dapt")
SUMMARY_FILE = "summary.json"
STEPS = {
    "zeroshot": "zero-shot CLIP (hand-crafted prompt 'a photo of a {}.') on the test set",
    "coop": "CoOp: learned text context, cross-entropy",
    "vpt": "VPT: learned visual tokens, cross-entropy",
    "coop_vpt": "CoOp+VPT: both prompts, cross-entropy",
    "dapt": "DAPT: both prompts, cross-entropy + dispersion losses (prototypes first); t-SNE figures after",
}


def parse_list(text: str, kind: type, name: str, choices: tuple[str, ...] | None = None) -> list[Any]:
    """A comma-separated option as a list, or an error naming the option and the bad value."""
    try:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} takes comma-separated {kind.__name__}s, got {text!r}") from None
    bad = [value for value in values if choices is not None and value not in choices]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"{name}: {bad or text!r} not valid; choose from {', '.join(choices or ())}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dapt demo", description=__doc__)
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="demo config (default: configs/demo.yaml)")
    parser.add_argument(
        "--seeds",
        type=lambda text: parse_list(text, int, "--seeds"),
        default=[1],
        help="comma-separated seeds; more than one prints mean ± std over them (default: 1)",
    )
    parser.add_argument(
        "--methods",
        type=lambda text: parse_list(text, str, "--methods", tuple(METHODS)),
        default=list(DEFAULT_METHODS),
        help=f"comma-separated methods, from {', '.join(METHODS)} (default: {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the config's epoch count")
    parser.add_argument("--out", default="runs/demo", help="where the runs go (default: runs/demo)")
    return parser


def planned_runs(methods: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """The demo's (method, seed) runs in order: zero-shot CLIP first and once (it trains nothing, so one run serves
    every seed), DAPT last (its checkpoint is then the newest, the one the notebook opens), every other method in
    the order given, once per seed."""
    order = sorted(dict.fromkeys(methods), key=lambda method: (method != "zeroshot", method == "dapt"))
    return [(method, seed) for method in order for seed in (seeds[:1] if method == "zeroshot" else seeds)]


def run_method(method: str, seed: int, common: list[str], run_dir: Path) -> Any:
    """Test zero-shot CLIP, or fit and test ``method`` with ``seed``, in ``run_dir``; returns the CLI."""
    if method == "zeroshot":
        args = ["test", *common, "--model.method", method, "--run.dir", str(run_dir)]
    else:
        args = ["fit", *common, "--model.method", method, "--seed_everything", str(seed)]
        args += ["--run.dir", str(run_dir), "--run.test_after_fit", "true"]
        # The t-SNE figures are DAPT's (the paper's Figures 1 and 6): the baselines skip their cost.
        args += ["--embedding_plots.enabled", str(method == "dapt").lower()]
    if not METHODS[method].dispersion_losses:
        args += ["--model.beta_v", "null", "--model.beta_t", "null"]  # the config's are DAPT's
    with quiet_console():
        cli = cli_main(args)
    finish_wandb_runs(cli.trainer)  # every run gets its own W&B run
    return cli


def demo_main(argv: list[str]) -> int:
    """Run the demo and print each method's test accuracy, DAPT's dispersion and where everything was written."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config} does not exist (run the demo from the repository root)")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        return run_demo(args, extra)
    finally:
        torch.set_num_threads(threads)


def run_demo(args: argparse.Namespace, extra: list[str]) -> int:
    """The demo's runs and report (see :func:`demo_main`)."""

    # The demo starts afresh each time: its folders are replaced, not refused as finished runs.
    common = ["--config", args.config, "--run.overwrite", "true", *extra]
    if args.max_epochs is not None:
        common += ["--trainer.max_epochs", str(args.max_epochs)]
    out = Path(args.out)
    start = time.time()
    runs = planned_runs(args.methods, args.seeds)
    methods = list(dict.fromkeys(method for method, _ in runs))
    accuracy: dict[str, dict[int, float]] = {method: {} for method in methods}
    macro_f1: dict[str, dict[int, float]] = {method: {} for method in methods}
    dispersion: dict[int, tuple[Dispersion, Dispersion]] = {}
    dapt_cli = None
    for step, (method, seed) in enumerate(runs, start=1):
        seed_part = "" if method == "zeroshot" or len(args.seeds) == 1 else f"  (seed {seed})"
        print(f"== {step}/{len(runs)}  {STEPS[method]}{seed_part}", flush=True)
        run_dir = out / method if method == "zeroshot" else out / f"seed{seed}" / method
        cli = run_method(method, seed, common, run_dir)
        test = json.loads((run_dir / "metrics.json").read_text())["test"]
        for each in args.seeds if method == "zeroshot" else [seed]:
            accuracy[method][each] = test["test/acc"]
            macro_f1[method][each] = test["test/macro_f1"]
        if method == "dapt":
            dispersion[seed] = dispersion_before_after(cli.model, cli.datamodule)
            dapt_cli = cli
        classes = len(cli.datamodule.classnames)
        shots = cli.datamodule.num_shots

    elapsed = time.time() - start
    summary = {
        "seeds": args.seeds,
        "threads": torch.get_num_threads(),
        "elapsed_s": elapsed,
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "dispersion": {seed: [before.to_dict(), after.to_dict()] for seed, (before, after) in dispersion.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / SUMMARY_FILE, json.dumps(summary, indent=2).encode())

    threads = torch.get_num_threads()
    threads_text = f"{threads} thread" + ("s" if threads > 1 else "")
    seeds_text = f"seed {args.seeds[0]}" if len(args.seeds) == 1 else f"seeds {', '.join(map(str, args.seeds))}"
    print()
    print(
        f"Demo finished in {elapsed:.0f} s on {threads_text}: the synthetic dataset seen through "
        f"the colour filter ({classes} classes, chance {100 / classes:.1f}%), {shots} shots per class, {seeds_text}"
    )
    print()
    print("\n".join(accuracy_table(accuracy, macro_f1, args.seeds)))
    if dispersion and dapt_cli is not None:
        print()
        print("\n".join(dispersion_table(dispersion, dapt_cli.model.loss_settings.rbf_t)))
    print()
    trained = [method for method in methods if method != "zeroshot"]
    folders = [str(out / "zeroshot")] if "zeroshot" in methods else []
    if trained:
        seed_folders = f"seed{args.seeds[0]}" if len(args.seeds) == 1 else f"seed{{{','.join(map(str, args.seeds))}}}"
        folders.append(f"{out / seed_folders}/{{{','.join(trained)}}}")
    print(f"  runs                         : {', '.join(folders)}")
    print(f"  all numbers above            : {out / SUMMARY_FILE}")
    if dapt_cli is not None:
        dapt_dir = out / f"seed{args.seeds[-1]}" / "dapt"
        checkpoint = dapt_dir / "checkpoints" / "last.ckpt"
        print(f"  DAPT checkpoint              : {checkpoint}")
        print(f"  figures (t-SNE)              : {dapt_dir / 'figures'}")
        wandb_runs = offline_wandb_runs_since(dapt_dir / "wandb", start)
        if wandb_runs:
            print(f"  W&B run (offline)            : {wandb_runs[-1]}\n    upload with: wandb sync {wandb_runs[-1]}")
        print(f"  explore it: DAPT_CKPT={checkpoint} jupyter lab notebooks/explore_checkpoint.ipynb")
    return 0


def offline_wandb_runs_since(directory: Path, since: float) -> list[Path]:
    """The offline W&B runs under ``directory`` written at or after ``since`` (a ``time.time()``), oldest first: a
    demo run with W&B disabled must not point at an earlier run's files."""
    runs = [path for path in directory.glob("offline-run-*") if path.stat().st_mtime >= since]
    return sorted(runs, key=lambda path: path.stat().st_mtime)
