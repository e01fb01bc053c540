"""PromptSRC's Gaussian-weighted prompt aggregation (GPA): the prompts kept after training are a weighted sum of
the prompts at the end of each epoch, with weights from a Gaussian over the epoch number."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """The weight of each epoch ``1..epochs``: the normal density ``N(mean, std^2)`` at the epoch number, normalised
    to sum to 1 (upstream's ``get_gauss`` over ``range(1, MAX_EPOCH + 1)``)."""
    if epochs < 1:
        raise ValueError(f"GPA needs a fixed number of epochs (--trainer.max_epochs >= 1), got {epochs}")
    if not std > 0:
        raise ValueError(f"--model.gpa_std must be > 0, got {std}")
    density = [
        math.exp(-0.5 * ((epoch - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for epoch in range(1, epochs + 1)
    ]
    total = sum(density)
    if not total > 0:
        raise ValueError(
            f"--model.gpa_mean {mean} with --model.gpa_std {std} gives every one of the {epochs} epochs a weight of "
            "0: put the mean within the epochs or widen the spread"
        )
    return [value / total for value in density]


class GaussianPromptAggregation(L.Callback):
    """Replace the trained prompts by their Gaussian-weighted average over epochs when training ends.

    After the last batch of each epoch (where upstream aggregates, before that epoch's validation and checkpoint),
    the learned parameters times that epoch's weight are added to a running sum in fp32; after the last epoch's, the
    sum becomes the parameters. The sum is part of the checkpoint, so a resumed run aggregates the same prompts.

    Args:
        mean: the epoch (1-based) of the largest weight (``GPA_MEAN``).
        std: the spread in epochs (``GPA_STD``).
    """

    def __init__(self, mean: float = 15.0, std: float = 1.0) -> None:
        self.mean = mean
        self.std = std
        self.aggregate: dict[str, torch.Tensor] = {}
        self.epochs_added = 0

    @property
    def state_key(self) -> str:
        return f"GaussianPromptAggregation{{mean={self.mean}, std={self.std}}}"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gpa_weights(trainer.max_epochs or 0, self.mean, self.std)  # refuse bad settings before any step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx + 1 != trainer.num_training_batches:
            return
        epoch, epochs = trainer.current_epoch, trainer.max_epochs
        weight = gpa_weights(epochs, self.mean, self.std)[epoch]
        with torch.no_grad():
            for name, parameter in learned_parameters(pl_module).items():
                weighted = parameter.detach().float() * weight
                previous = self.aggregate.get(name)
                self.aggregate[name] = weighted if previous is None else previous + weighted
        self.epochs_added = epoch + 1
        if epoch == epochs - 1:
            self.install(pl_module)

    def install(self, pl_module: L.LightningModule) -> None:
        """Put the aggregated prompts in place of the trained ones."""
        with torch.no_grad():
            for name, parameter in learned_parameters(pl_module).items():
                parameter.copy_(self.aggregate[name].to(parameter))
        rank_zero_info(
            f"GPA: the prompts are now the Gaussian-weighted average over {self.epochs_added} epochs "
            f"(mean {self.mean}, std {self.std})"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"aggregate": dict(self.aggregate), "epochs_added": self.epochs_added}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.aggregate = dict(state_dict["aggregate"])
        self.epochs_added = int(state_dict["epochs_added"])


def learned_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters training changes (the prompts), by name."""
    return {name: parameter for name, parameter in module.named_parameters() if parameter.requires_grad}
