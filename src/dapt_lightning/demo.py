"""``dapt demo``: zero-shot CLIP, then DAPT fitted and tested, on the synthetic dataset with the tiny CLIP."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def demo_main(argv: list[str]) -> int:
    """Run the demo and print zero-shot and tuned test accuracy and where everything was written."""
    parser = argparse.ArgumentParser(prog="dapt demo", description=__doc__)
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="demo config (default: configs/demo.yaml)")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the config's epoch count")
    parser.add_argument("--root-dir", default=None, help="where runs go (default: the config's default_root_dir)")
    args, extra = parser.parse_known_args(argv)
    os.environ.setdefault("WANDB_SILENT", "true")

    from dapt_lightning.cli import cli_main

    common = ["--config", args.config, *extra]
    if args.max_epochs is not None:
        common += ["--trainer.max_epochs", str(args.max_epochs)]
    if args.root_dir is not None:
        common += ["--trainer.default_root_dir", args.root_dir, "--trainer.logger.init_args.save_dir", args.root_dir]
    start = time.time()
    print("== 1/2  zero-shot CLIP (hand-crafted prompt 'a photo of a {}.') on the test set", flush=True)
    zero_shot = cli_main(["test", *common, "--model.method", "zeroshot"])
    zero_shot_acc = float(zero_shot.trainer.callback_metrics["test/acc"])

    print("== 2/2  DAPT: fit on the few-shot training set, then test", flush=True)
    fitted = cli_main(["fit", *common])
    results = fitted.trainer.test(fitted.model, datamodule=fitted.datamodule, ckpt_path=None, verbose=False)[0]
    checkpoint = (
        fitted.trainer.checkpoint_callback.last_model_path or fitted.trainer.checkpoint_callback.best_model_path
    )
    logger = fitted.trainer.logger
    run_dir = getattr(getattr(logger, "experiment", None), "dir", None) if logger else None
    classes = len(fitted.datamodule.classnames)
    print()
    print(f"Demo finished in {time.time() - start:.0f} s  ({classes} classes, chance {100 / classes:.1f}%)")
    print(f"  zero-shot test accuracy : {100 * zero_shot_acc:.1f}%")
    accuracy, macro_f1 = 100 * results["test/acc"], 100 * results["test/macro_f1"]
    print(f"  DAPT test accuracy      : {accuracy:.1f}%   (macro-F1 {macro_f1:.1f}%)")
    print(f"  checkpoint              : {checkpoint}")
    print(f"  run folder              : {fitted.trainer.default_root_dir}")
    if run_dir:
        print(
            f"  W&B run (offline)       : {Path(run_dir).parent}   -> upload with `wandb sync {Path(run_dir).parent}`"
        )
    return 0
