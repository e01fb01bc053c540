"""CLIP-LoRA: low-rank updates of the q, k and v projections of every attention block of both towers."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from dapt_lightning.methods.base import Batch
from dapt_lightning.methods.tuning import TrainedMethod
from dapt_lightning.model.lora import attach_lora
from dapt_lightning.model.prompted_clip import PromptedCLIP

LOGIT_SCALE = 100.0
"""The official constant (``logit_scale = 100`` in ``main.py``), not the CLIP's learned scale."""


class CLIPLoRA(TrainedMethod):
    """CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): LoRA of rank ``rank`` on q, k and v of every block of the text and
    image towers (not the output projection, not the MLP), scaling ``alpha / sqrt(rank)``, dropout on the LoRA input;
    logits ``100 cos(image, text)`` with the text of the first template; AdamW, cosine to 1e-6 over
    ``iterations_per_shot x shots`` steps; evaluation merges the updates into the weights.

    The official code draws its own few-shot samples; here it uses the same Dassl splits as every method. Its
    dropout-0 path is broken upstream; here ``dropout 0`` is plain LoRA without dropout.

    Args:
        rank: LoRA rank ``r`` (2).
        alpha: LoRA ``alpha`` (1).
        dropout: dropout on the LoRA input while training (0.25).
        towers: ``both``, ``text`` or ``image``: which towers are adapted.
        lr: AdamW learning rate (2e-4).
        weight_decay: AdamW weight decay (1e-2).
        min_lr: the cosine schedule's floor (1e-6).
        iterations_per_shot: training steps per shot (500: 8000 steps at 16 shots); training stops there.
        template: the class prompt (``{}``: the class name); None: the dataset's.
    """

    name = "clip_lora"
    title = "CLIP-LoRA"
    adapts_attention: ClassVar[bool] = True

    def __init__(
        self,
        rank: int = 2,
        alpha: float = 1.0,
        dropout: float = 0.25,
        towers: str = "both",
        lr: float = 2e-4,
        weight_decay: float = 1e-2,
        min_lr: float = 1e-6,
        iterations_per_shot: int = 500,
        template: str | None = None,
        **kwargs: Any,
    ) -> None:
        if rank < 1 or not 0 <= dropout < 1 or iterations_per_shot < 1:
            raise ValueError(
                f"--model.rank must be >= 1, --model.dropout in [0, 1), --model.iterations_per_shot >= 1: got {rank}, "
                f"{dropout}, {iterations_per_shot}"
            )
        if towers not in ("both", "text", "image"):
            raise ValueError(f"--model.towers must be both, text or image, got {towers!r}")
        if not lr > 0:
            raise ValueError(f"--model.lr must be > 0, got {lr}")
        super().__init__(**kwargs)

    def build_state(self, num_classes: int, dim: int) -> None:
        model, settings = self.model, self.hparams
        if not model.text_tower.lean_blocks or not model.image_tower.cls_only_last_block:
            raise ValueError(
                f"CLIP-LoRA adapts the q/k/v projections of open_clip's plain attention blocks, which this CLIP "
                f"({settings.clip_name}) does not run in both towers; choose a ViT CLIP with a causal text tower"
            )
        adapters = {}
        if settings.towers in ("both", "text"):
            adapters["text"] = model.text_tower.transformer.resblocks
        if settings.towers in ("both", "image"):
            adapters["image"] = model.image_tower.visual.transformer.resblocks
        rank, alpha, dropout = settings.rank, settings.alpha, settings.dropout
        adapted = {tower: attach_lora(blocks, rank, alpha, dropout) for tower, blocks in adapters.items()}
        self.lora = nn.ModuleDict(adapted)

    def forward_features(
        self, images: torch.Tensor, text_features: torch.Tensor | None = None, model: PromptedCLIP | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = model or self.model
        image_features = model.encode_image(images)
        if text_features is None:
            text_features = model.encode_text()
        logits = LOGIT_SCALE * image_features @ text_features.to(image_features.dtype).t()
        return logits, image_features, text_features

    def total_steps(self) -> int:
        """``iterations_per_shot x shots`` (the official ``n_iters * shots``)."""
        shots = getattr(self.trainer.datamodule, "num_shots", 16)
        return self.hparams.iterations_per_shot * max(1, shots)

    def configure_optimizers(self) -> dict[str, Any]:
        settings = self.hparams
        optimizer = torch.optim.AdamW(
            self.lora.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.999)
        )
        total = self.total_steps()
        planned = self.trainer.estimated_stepping_batches  # inf without an epoch or step limit
        if planned < total:  # an epoch or step limit ends training first: the cosine reaches its floor there
            rank_zero_info(f"CLIP-LoRA: {int(planned)} training steps (the Trainer's limit; {total} officially)")
            total = int(planned)
        else:
            rank_zero_info(f"CLIP-LoRA: {total} training steps ({settings.iterations_per_shot} per shot)")
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=settings.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> int | None:
        if self.global_step >= self.total_steps():
            self.trainer.should_stop = True  # the official loop ends after its step count, mid-epoch
            return -1
        return None
