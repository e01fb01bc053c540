"""The official schedule: epochs per shot count, and a constant warm-up, then cosine, stepped once per epoch."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LRScheduler, SequentialLR

from dapt_lightning.data.registry import dataset_max_epochs


def warmup_cosine(
    optimizer: Optimizer, max_epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5
) -> LRScheduler:
    """Epochs ``< warmup_epochs`` run at ``warmup_lr``; epoch ``e`` after runs at
    ``lr * 0.5 * (1 + cos(pi * (e - warmup_epochs) / max_epochs))``, as Dassl's ConstantWarmupScheduler + cosine.
    """
    if max_epochs < 1:
        raise ValueError(f"--trainer.max_epochs must be >= 1, got {max_epochs}")
    cosine = CosineAnnealingLR(optimizer, T_max=max_epochs)
    if warmup_epochs <= 0:
        return cosine
    base_lr = optimizer.param_groups[0]["initial_lr"]
    if base_lr <= 0:
        raise ValueError(f"--model.lr must be > 0, got {base_lr}")
    warmup = ConstantLR(optimizer, factor=warmup_lr / base_lr, total_iters=warmup_epochs)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_epochs])


def expected_lr(epoch: int, lr: float, max_epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """The learning rate of ``epoch`` (0-based) in closed form, the reference the scheduler is tested against."""
    if epoch < warmup_epochs:
        return warmup_lr
    return lr * 0.5 * (1 + math.cos(math.pi * (epoch - warmup_epochs) / max_epochs))


def official_max_epochs(dataset: str, num_shots: int) -> int:
    """Epochs of the official configs: the dataset record's fixed count when it has one (ImageNet and its variants:
    50); otherwise 1 shot 50, 2 and 4 shots 100, 8 and more 200."""
    fixed = dataset_max_epochs(dataset)
    if fixed is not None:
        return fixed
    if num_shots == 1:
        return 50
    if num_shots in (2, 4):
        return 100
    return 200
