"""``dapt demo``: zero-shot CLIP and the prompt-tuning methods side by side on the procedural dataset with the tiny
CLIP. ``command`` parses the options and runs the methods, ``dispersion`` measures DAPT's two dispersion losses
before and after tuning, ``report`` formats the tables."""

from dapt_lightning.experiments.demo.command import demo_main, offline_wandb_runs_since

__all__ = ["demo_main", "offline_wandb_runs_since"]
