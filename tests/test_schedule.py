"""The official schedule (constant warm-up epoch, then per-epoch cosine) and the optimiser the module builds."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from dapt_lightning.data.datamodule import FewShotDataModule
from dapt_lightning.methods import CoOpVPT
from dapt_lightning.schedule import expected_lr, warmup_cosine


def spec_lr(epoch: int, lr: float, max_epochs: int) -> float:
    """SPEC.md: epoch 0 at 1e-5; epoch e >= 1 at lr * 0.5 * (1 + cos(pi * (e - 1) / E))."""
    return 1e-5 if epoch == 0 else lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max_epochs))


@pytest.mark.parametrize(("lr", "max_epochs"), [(0.002, 1), (2.0, 5), (20.0, 50), (0.02, 200)])
def test_warmup_cosine_per_epoch(lr: float, max_epochs: int) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = warmup_cosine(optimizer, max_epochs)
    for epoch in range(max_epochs):
        current = optimizer.param_groups[0]["lr"]
        assert current == pytest.approx(spec_lr(epoch, lr, max_epochs), rel=1e-9, abs=1e-12), epoch
        assert current == pytest.approx(expected_lr(epoch, lr, max_epochs), rel=1e-9, abs=1e-12), epoch
        optimizer.step()
        scheduler.step()


def test_warmup_cosine_first_cosine_epoch_is_the_base_lr() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = warmup_cosine(optimizer, 10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


def test_warmup_cosine_rejects_bad_settings() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="max_epochs"):
        warmup_cosine(optimizer, 0)


class _RecordLR(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_module_optimiser_and_schedule_in_a_real_fit(synthetic_root: Path, make_trainer) -> None:
    data = FewShotDataModule(
        "synthetic", root=str(synthetic_root), num_shots=1, batch_size=4, num_workers=0, image_size=64
    )
    module = CoOpVPT(classnames=data.classnames, clip_name="dapt-tiny", pretrained=None, lr=0.3)
    recorder = _RecordLR()
    trainer = make_trainer(max_epochs=4, limit_train_batches=1, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(module, datamodule=data)

    (optimizer,) = trainer.optimizers
    assert isinstance(optimizer, torch.optim.SGD)
    (group,) = optimizer.param_groups
    assert group["momentum"] == 0.9
    assert group["weight_decay"] == 5e-4
    trained = {id(p) for p in group["params"]}
    assert trained == {id(module.model.text_prompt.txt_ctx), id(module.model.visual_prompt.vis_ctx)}
    assert not any(p.requires_grad for p in module.model.clip.parameters())
    # Stepped once per epoch, not per batch.
    assert recorder.lrs == pytest.approx([spec_lr(epoch, 0.3, 4) for epoch in range(4)], rel=1e-9)
