"""What every trained method shares (:class:`TrainedMethod`): a training step that computes and logs the method's
loss terms, and a stop with a clear message when a loss term becomes non-finite; and the prompt methods' official
optimiser and schedule (:class:`PromptTuning`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from dapt_lightning.methods.base import Batch, CLIPMethod
from dapt_lightning.schedule import warmup_cosine


class TrainedMethod(CLIPMethod):
    """A method that learns something: a training step that computes and logs the method's loss terms (cross-entropy
    unless it adds its own) and a stop with a clear message when a loss term becomes non-finite. Subclasses give the
    optimiser (``configure_optimizers``) and an ``lr`` setting."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._non_finite: NonFiniteWatch | None = None

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, image_features: torch.Tensor, text_features: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The loss of one training batch: ``total`` and every term (logged as ``train/loss_<term>``)."""
        ce = F.cross_entropy(logits, labels)
        return {"total": ce, "ce": ce}

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logits and loss terms (:meth:`loss`) of one training batch; a method whose loss needs more of the
        batch than its features (PromptSRC's frozen-CLIP teacher) overrides this."""
        logits, image_features, text_features = self.forward_features(images)
        return logits, self.loss(logits, labels, image_features, text_features)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, labels, _ = batch
        logits, terms = self.batch_loss(images, labels)
        if self._non_finite is None:
            names = [name for name in terms if name != "total"] + ["total"]  # a term is named before the sum
            self._non_finite = NonFiniteWatch(names, terms["total"].device, self.global_step)
        self._non_finite.update(terms)
        batch_size = labels.shape[0]
        logged = {"train/loss": terms["total"]}
        logged |= {f"train/loss_{name}": value for name, value in terms.items() if name != "total"}
        logged["train/acc"] = (logits.argmax(-1) == labels).float().mean()
        self.log_dict(logged, on_step=True, on_epoch=True, batch_size=batch_size, sync_dist=True)
        self.train_f1(logits.detach(), labels)
        self.log("train/macro_f1", self.train_f1, on_step=False, on_epoch=True, batch_size=batch_size)
        self.log(
            "train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, batch_size=batch_size
        )
        self.log("loss", terms["total"], prog_bar=True, logger=False, batch_size=batch_size)
        return terms["total"]

    def on_train_epoch_end(self) -> None:
        # Before the last checkpoint is written: checkpoint callbacks run after the module's epoch-end hook.
        watch, self._non_finite = self._non_finite, None
        found = watch.first() if watch is not None else None  # the epoch's one host read
        if found is None:
            return
        step, terms = found
        precision = self.trainer.precision if self._trainer is not None else "32"
        weights = "".join(
            f", --model.{name} {self.hparams[name]}" for name in ("beta_v", "beta_t") if name in self.hparams
        )
        raise FloatingPointError(
            f"loss term {terms[0]!r} became non-finite (terms: {', '.join(terms)}) at global step {step} "
            f"(epoch {self.current_epoch}) with --model.lr {self.hparams.lr}{weights}, --trainer.precision "
            f"{precision}. Usual causes: a large learning rate (e.g. LR 20 of the official configs) in 16-mixed "
            "precision (use bf16-mixed or 32), or corrupt inputs. The last good checkpoint (last.ckpt) is kept: "
            "change the settings and resume from it with --ckpt_path."
        )


class PromptTuning(TrainedMethod):
    """A method that trains prompts with SGD (momentum, weight decay), a constant warm-up, then cosine annealing
    stepped once per epoch (the official DAPT/CoOp schedule).

    Args:
        lr: SGD learning rate after warm-up.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        warmup_epochs: epochs at the constant ``warmup_lr`` before the cosine schedule.
        warmup_lr: the warm-up learning rate.
    """

    def __init__(
        self,
        lr: float = 0.002,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        for name, value in (("lr", lr), ("warmup_lr", warmup_lr)):
            if not value > 0:
                raise ValueError(f"--model.{name} must be > 0, got {value}")
        if warmup_epochs < 0:
            raise ValueError(f"--model.warmup_epochs must be >= 0, got {warmup_epochs}")
        super().__init__(**kwargs)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(self).__name__} has no prompts to train; evaluate it with `dapt test` instead")
        settings = self.hparams
        optimizer = torch.optim.SGD(
            params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        if max_epochs <= settings.warmup_epochs:
            rank_zero_warn(
                f"--trainer.max_epochs {max_epochs} <= --model.warmup_epochs {settings.warmup_epochs}: every epoch is "
                f"warm-up at the constant --model.warmup_lr {settings.warmup_lr}, and the learning rate never reaches "
                f"--model.lr {settings.lr}; train for more epochs (or set --model.warmup_epochs 0)"
            )
        scheduler = warmup_cosine(optimizer, max_epochs, settings.warmup_epochs, settings.warmup_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class NonFiniteWatch:
    """Remembers, on the device, the first training batch of an epoch with a non-finite loss term.

    Reading a loss on the host would wait for the step's kernels, so nothing is read until ``first()``, once an
    epoch. Every tensor is made on the device (a tensor built from Python numbers would be a synchronous copy).

    Args:
        terms: the names of the loss terms, in the order they are reported.
        device: where the losses live.
        first_step: the global step of the epoch's first batch.
    """

    def __init__(self, terms: list[str], device: torch.device, first_step: int) -> None:
        self.terms = terms
        self.first_step = first_step
        self.batches = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_terms = torch.zeros(len(terms), dtype=torch.bool, device=device)

    def update(self, terms: dict[str, torch.Tensor]) -> None:
        """Note this batch's terms (no host synchronisation)."""
        bad = ~torch.isfinite(torch.stack([terms[name].detach().float() for name in self.terms]))
        first = (self.first_bad < 0) & bad.any()
        self.first_bad = torch.where(first, self.batches, self.first_bad)
        self.bad_terms = torch.where(first, bad, self.bad_terms)
        self.batches += 1

    def first(self) -> tuple[int, list[str]] | None:
        """The global step and the names of the non-finite terms of the first bad batch, or None."""
        index = int(self.first_bad)
        if index < 0:
            return None
        return self.first_step + index, [
            name for name, bad in zip(self.terms, self.bad_terms.tolist(), strict=True) if bad
        ]
