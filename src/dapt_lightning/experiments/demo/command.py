"""``dapt demo``: zero-shot CLIP, then CoOp, VPT and DAPT fitted and tested, on the synthetic dataset with the tiny
CLIP; their accuracies side by side, and DAPT's dispersion before and after tuning."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dapt_lightning.arguments import ArgumentParser, UsageError, comma_list, command_parser, parse, split_flags
from dapt_lightning.data.registry import config_path
from dapt_lightning.experiments.demo.dispersion import Dispersion, dispersion_before_after
from dapt_lightning.experiments.demo.report import accuracy_table, dispersion_table
from dapt_lightning.experiments.run import RunRecord, RunSpec, execute
from dapt_lightning.methods import DAPT, ZeroShotCLIP, list_methods, method_class
from dapt_lightning.methods.registry import setting_name
from dapt_lightning.storage import atomic_write_bytes

DEMO_CONFIG = config_path("synthetic")
"""The synthetic dataset's config (``configs/demo.yaml``), which the demo runs."""
DEFAULT_METHODS = ("zeroshot", "coop", "vpt", "dapt")
SUMMARY_FILE = "summary.json"
STEPS = {
    "zeroshot": "zero-shot CLIP (hand-crafted prompt 'a photo of a {}.') on the test set",
    "linear_probe": "linear probe: logistic regression on frozen image features, C searched on validation",
    "coop": "CoOp: learned text context, cross-entropy",
    "cocoop": "CoCoOp: learned text context shifted per image by a meta-net, cross-entropy",
    "kgcoop": "KgCoOp: learned text context, cross-entropy + closeness to the hand-crafted prompt's features",
    "tip_adapter": "Tip-Adapter-F: zero-shot CLIP + a fine-tuned cache of few-shot features, alpha/beta on validation",
    "clip_lora": "CLIP-LoRA: rank-2 updates of q/k/v in every block of both towers, cross-entropy",
    "vpt": "VPT: learned visual tokens, cross-entropy",
    "coop_vpt": "CoOp+VPT: both prompts, cross-entropy",
    "ivlp": "IVLP: text and visual prompts in the first blocks of both towers, cross-entropy",
    "maple": "MaPLe: deep text prompts, visual prompts projected from them, cross-entropy",
    "promptsrc": "PromptSRC: IVLP's prompts kept near the frozen CLIP, averaged over epochs (GPA)",
    "dapt": "DAPT: both prompts, cross-entropy + dispersion losses (prototypes first); t-SNE figures after",
}


@dataclass(frozen=True)
class DemoOptions:
    """What a ``dapt demo`` command line asks for (every other flag is a setting of each run)."""

    config: str
    seeds: list[int]
    methods: list[str]
    threads: int | None
    max_epochs: int | None
    out: Path
    run_args: tuple[str, ...]


OWN_OPTIONS = ("--config", "--seeds", "--methods", "--threads", "--max_epochs", "--out")


def build_parser() -> ArgumentParser:
    """The parser of ``dapt demo``'s own options."""
    parser = command_parser("dapt demo", __doc__ + " Every other flag is a setting of each run (`dapt fit --help`).")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="demo config")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds; more than one prints mean ± std over them")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated methods, from {', '.join(list_methods())}",
    )
    parser.add_argument("--threads", type=int | None, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--max_epochs", type=int | None, default=None, help="override the config's epoch count")
    parser.add_argument("--out", default="runs/demo", help="where the runs go")
    return parser


def parse_options(argv: list[str]) -> DemoOptions:
    """Read and check the command line; a bad option is a one-line ``UsageError``."""
    own, run_args = split_flags(argv, OWN_OPTIONS)
    args = parse(build_parser(), own)
    if not Path(args.config).is_file():
        raise UsageError(f"--config {args.config} does not exist (run the demo from the repository root)")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    seeds = comma_list(args.seeds, int, "--seeds")
    methods = comma_list(args.methods, str, "--methods", list_methods())
    return DemoOptions(args.config, seeds, methods, args.threads, args.max_epochs, Path(args.out), tuple(run_args))


def planned_runs(methods: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """The demo's (method, seed) runs in order: zero-shot CLIP first and once (it trains nothing, so one run serves
    every seed), DAPT last (its checkpoint is then the newest, the one the notebook opens), every other method in
    the order given, once per seed."""
    order = sorted(dict.fromkeys(methods), key=lambda method: (method != "zeroshot", method == "dapt"))
    return [(method, seed) for method in order for seed in (seeds[:1] if method == "zeroshot" else seeds)]


def run_method(method: str, seed: int, options: DemoOptions, run_dir: Path) -> RunRecord:
    """Test zero-shot CLIP, or fit and test ``method`` with ``seed``, in ``run_dir``."""
    method_type = method_class(method)
    # The demo starts afresh each time: its folders are replaced, not refused as finished runs.
    settings: dict[str, Any] = {"run.overwrite": True, "model": setting_name(method_type), "run.dir": str(run_dir)}
    if options.max_epochs is not None:
        settings["trainer.max_epochs"] = options.max_epochs
    # The config first, then the person's flags: a flag overrides what the config says (`--trainer.precision 32`).
    args = ("--config", options.config, *options.run_args)
    if issubclass(method_type, ZeroShotCLIP):
        return execute(RunSpec("test", args, (), settings))
    settings |= {"seed_everything": seed, "run.test_after_fit": True}
    # The t-SNE figures are DAPT's (the paper's Figures 1 and 6): the baselines skip their cost.
    settings["embedding_plots.enabled"] = issubclass(method_type, DAPT)
    return execute(RunSpec("fit", args, (), settings))


def demo_main(argv: list[str]) -> int:
    """Run the demo and print each method's test accuracy, DAPT's dispersion and where everything was written."""
    options = parse_options(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(options.threads or threads)
    try:
        return run_demo(options)
    finally:
        torch.set_num_threads(threads)


def run_demo(args: DemoOptions) -> int:
    """The demo's runs and report (see :func:`demo_main`)."""
    out = args.out
    start = time.time()
    runs = planned_runs(args.methods, args.seeds)
    methods = list(dict.fromkeys(method for method, _ in runs))
    accuracy: dict[str, dict[int, float]] = {method: {} for method in methods}
    macro_f1: dict[str, dict[int, float]] = {method: {} for method in methods}
    dispersion: dict[int, tuple[Dispersion, Dispersion]] = {}
    dapt_record = None
    for step, (method, seed) in enumerate(runs, start=1):
        seed_part = "" if method == "zeroshot" or len(args.seeds) == 1 else f"  (seed {seed})"
        what = STEPS.get(method) or method_class(method).title or method  # a method of one's own: its title
        print(f"== {step}/{len(runs)}  {what}{seed_part}", flush=True)
        run_dir = out / method if method == "zeroshot" else out / f"seed{seed}" / method
        record = run_method(method, seed, args, run_dir)
        test = record.record["test"]
        for each in args.seeds if method == "zeroshot" else [seed]:
            accuracy[method][each] = test["test/acc"]
            macro_f1[method][each] = test["test/macro_f1"]
        if method == "dapt":
            dispersion[seed] = dispersion_before_after(record.model, record.datamodule)
            dapt_record = record
        classes = len(record.datamodule.classnames)
        shots = record.datamodule.num_shots

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
    if dispersion and dapt_record is not None:
        print()
        print("\n".join(dispersion_table(dispersion, dapt_record.model.hparams.rbf_t)))
    print()
    trained = [method for method in methods if method != "zeroshot"]
    folders = [str(out / "zeroshot")] if "zeroshot" in methods else []
    if trained:
        seed_folders = f"seed{args.seeds[0]}" if len(args.seeds) == 1 else f"seed{{{','.join(map(str, args.seeds))}}}"
        folders.append(f"{out / seed_folders}/{{{','.join(trained)}}}")
    print(f"  runs                         : {', '.join(folders)}")
    print(f"  all numbers above            : {out / SUMMARY_FILE}")
    if dapt_record is not None:
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
