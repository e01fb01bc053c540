"""``dapt demo``: zero-shot CLIP, then DAPT fitted and tested, on the synthetic dataset with the tiny CLIP."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from dapt_lightning.data.registry import config_path
from dapt_lightning.experiments.lightning_cli import cli_main
from dapt_lightning.loggers import finish_wandb_runs

DEMO_CONFIG = config_path("synthetic")
"""The synthetic dataset's config (``configs/demo.yaml``), which the demo runs."""


def demo_main(argv: list[str]) -> int:
    """Run the demo and print zero-shot and tuned test accuracy and where everything was written."""
    parser = argparse.ArgumentParser(prog="dapt demo", description=__doc__)
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="demo config (default: configs/demo.yaml)")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the config's epoch count")
    parser.add_argument("--out", default="runs/demo", help="where the two runs go (default: runs/demo)")
    args, extra = parser.parse_known_args(argv)
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config} does not exist (run the demo from the repository root)")
    os.environ.setdefault("WANDB_SILENT", "true")

    # The demo starts afresh each time: its folders are replaced, not refused as finished runs.
    common = ["--config", args.config, "--run.overwrite", "true", *extra]
    if args.max_epochs is not None:
        common += ["--trainer.max_epochs", str(args.max_epochs)]
    out = Path(args.out)
    start = time.time()
    print("== 1/2  zero-shot CLIP (hand-crafted prompt 'a photo of a {}.') on the test set", flush=True)
    zero_shot = cli_main(["test", *common, "--model.method", "zeroshot", "--run.dir", str(out / "zeroshot")])
    finish_wandb_runs(zero_shot.trainer)  # the DAPT run gets its own W&B run

    print("== 2/2  DAPT: class prototypes, few-shot training, then the test set", flush=True)
    fitted = cli_main(["fit", *common, "--run.dir", str(out / "dapt"), "--run.test_after_fit", "true"])
    finish_wandb_runs(fitted.trainer)

    zero = json.loads((out / "zeroshot" / "metrics.json").read_text())["test"]
    tuned = json.loads((out / "dapt" / "metrics.json").read_text())["test"]
    classes = len(fitted.datamodule.classnames)
    print()
    print(f"Demo finished in {time.time() - start:.0f} s  ({classes} classes, chance {100 / classes:.1f}%)")
    print(f"  zero-shot CLIP test accuracy : {100 * zero['test/acc']:.1f}%")
    macro_f1 = 100 * tuned["test/macro_f1"]
    print(f"  DAPT test accuracy           : {100 * tuned['test/acc']:.1f}%  (macro-F1 {macro_f1:.1f}%)")
    checkpoint = out / "dapt" / "checkpoints" / "last.ckpt"
    print(f"  checkpoint                   : {checkpoint}")
    print(f"  metrics                      : {out / 'dapt' / 'metrics.json'}, {out / 'zeroshot' / 'metrics.json'}")
    print(f"  figures (t-SNE)              : {out / 'dapt' / 'figures'}")
    wandb_runs = offline_wandb_runs_since(out / "dapt" / "wandb", start)
    if wandb_runs:
        print(f"  W&B run (offline)            : {wandb_runs[-1]}\n    upload with: wandb sync {wandb_runs[-1]}")
    print(f"  explore it: DAPT_CKPT={checkpoint} jupyter lab notebooks/explore_checkpoint.ipynb")
    return 0


def offline_wandb_runs_since(directory: Path, since: float) -> list[Path]:
    """The offline W&B runs under ``directory`` written at or after ``since`` (a ``time.time()``), oldest first: a
    demo run with W&B disabled must not point at an earlier run's files."""
    runs = [path for path in directory.glob("offline-run-*") if path.stat().st_mtime >= since]
    return sorted(runs, key=lambda path: path.stat().st_mtime)
