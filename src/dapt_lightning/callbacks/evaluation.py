"""Evaluation extras from the features the module already computed: dispersion measures and per-class accuracy."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from dapt_lightning.callbacks.paths import output_folder
from dapt_lightning.storage import atomic_write_bytes


def mean_pairwise_cosine(text_features: torch.Tensor) -> float:
    """Mean cosine similarity over the unordered pairs of (L2-normalised) class text features ``[C, D]``."""
    count = text_features.shape[0]
    if count < 2:
        return float("nan")
    features = torch.nn.functional.normalize(text_features.double(), dim=-1)
    similarity = features @ features.t()
    off_diagonal = similarity.sum() - similarity.diagonal().sum()
    return float(off_diagonal / (count * (count - 1)))


class DispersionStats:
    """Streaming sums for the intra-class spread of image features, reducible across processes by summation."""

    def __init__(self, num_classes: int, dim: int, device: torch.device) -> None:
        self.sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.square_norms = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.prototype_distance = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor | None) -> None:
        features = features.double()
        self.sums.index_add_(0, labels, features)
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        self.square_norms.index_add_(0, labels, features.square().sum(-1))
        if prototypes is not None:
            self.prototype_distance += (features - prototypes[labels].double()).norm(dim=-1).sum()

    def tensors(self) -> list[torch.Tensor]:
        return [self.sums, self.counts, self.square_norms, self.prototype_distance]

    def summary(self, with_prototypes: bool) -> dict[str, float]:
        """Mean squared distance to the class mean (over images) and mean distance to the class prototype."""
        seen = self.counts > 0
        total = self.counts.sum().clamp(min=1)
        # sum_i ||x_i - mu||^2 = sum_i ||x_i||^2 - ||sum_i x_i||^2 / n, per class.
        spread = self.square_norms[seen] - self.sums[seen].square().sum(-1) / self.counts[seen]
        result = {"image_sqdist_to_class_mean": float(spread.sum() / total)}
        if with_prototypes:
            result["image_dist_to_prototype"] = float(self.prototype_distance / total)
        return result


class DispersionMonitor(L.Callback):
    """Logs the spreads DAPT acts on, at every validation and test, from features the module already computed.

    - ``<stage>/dispersion/text_mean_cosine``: mean pairwise cosine similarity of the class text embeddings
      (the inter-dispersion loss pushes it down);
    - ``<stage>/dispersion/image_dist_to_prototype``: mean L2 distance of image embeddings to their class
      prototype (DAPT's zero-shot prototypes; only when the module has them);
    - ``<stage>/dispersion/image_sqdist_to_class_mean``: mean squared L2 distance of image embeddings to the mean
      embedding of their class in this evaluation (comparable across methods; the intra loss pulls it down).

    Args:
        stages: evaluations to measure, from ``val`` and ``test``.
    """

    def __init__(self, stages: list[str] | None = None) -> None:
        self.stages = list(stages if stages is not None else ["val", "test"])
        self._stats: DispersionStats | None = None

    def _start(self, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        self._stats = DispersionStats(len(model.classnames), model.text_tower.output_dim, pl_module.device)

    def _update(self, pl_module: L.LightningModule, outputs: Any) -> None:
        if self._stats is None or not isinstance(outputs, dict) or "image_features" not in outputs:
            return
        self._stats.update(outputs["image_features"], outputs["labels"], _prototypes(pl_module))

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        stats, self._stats = self._stats, None
        if stats is None or trainer.sanity_checking:
            return
        if trainer.world_size > 1:
            reduced = [trainer.strategy.reduce(t, reduce_op="sum") for t in stats.tensors()]
            stats.sums, stats.counts, stats.square_norms, stats.prototype_distance = reduced
        values = stats.summary(with_prototypes=_prototypes(pl_module) is not None)
        text = getattr(pl_module, "eval_text_features", None)
        if text is None:
            with torch.no_grad():
                text = pl_module.model.encode_text()
        values["text_mean_cosine"] = mean_pairwise_cosine(text.float())
        # Logged through the module so that Lightning attaches the right step/epoch; every rank holds the same value.
        for name, value in values.items():
            pl_module.log(f"{stage}/dispersion/{name}", value, on_step=False, on_epoch=True, sync_dist=False)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "val" in self.stages:
            self._start(pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "test" in self.stages:
            self._start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._update(pl_module, outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._update(pl_module, outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")


def _prototypes(pl_module: L.LightningModule) -> torch.Tensor | None:
    """The module's class prototypes (DAPT's), or None when it has none."""
    return pl_module.prototypes if getattr(pl_module, "has_prototypes", False) else None


def per_class_rows(confusion: torch.Tensor, classnames: list[str]) -> list[list[Any]]:
    """``[label, class name, accuracy, correct, images]`` per class from a confusion matrix (rows: true labels)."""
    rows = []
    for label, name in enumerate(classnames):
        total = int(confusion[label].sum())
        correct = int(confusion[label, label])
        rows.append([label, name, correct / total if total else float("nan"), correct, total])
    return rows


class PerClassAccuracy(L.Callback):
    """At the end of testing: per-class accuracy as a W&B table, a CSV file and the confusion matrix.

    Files go to ``<log dir>/per_class_test_accuracy.csv`` and ``confusion_matrix.pt`` (rank zero only).

    Args:
        table_key: the W&B table's key.
        write_files: write the CSV file and confusion matrix next to the run.
    """

    COLUMNS = ["label", "class", "accuracy", "correct", "images"]

    def __init__(self, table_key: str = "test/per_class_accuracy", write_files: bool = True) -> None:
        self.table_key = table_key
        self.write_files = write_files
        self._confusion: torch.Tensor | None = None
        self.last_rows: list[list[Any]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        num_classes = len(pl_module.model.classnames)
        self._confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=pl_module.device)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        if self._confusion is None or not isinstance(outputs, dict) or "predictions" not in outputs:
            return
        num_classes = self._confusion.shape[0]
        index = outputs["labels"] * num_classes + outputs["predictions"]
        self._confusion += torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        confusion, self._confusion = self._confusion, None
        if confusion is None:
            return
        if trainer.world_size > 1:
            confusion = trainer.strategy.reduce(confusion, reduce_op="sum")
        self.last_rows = per_class_rows(confusion.cpu(), list(pl_module.model.classnames))
        self._publish(trainer, confusion.cpu(), output_folder(trainer))

    @rank_zero_only
    def _publish(self, trainer: L.Trainer, confusion: torch.Tensor, folder: Path) -> None:
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table(self.table_key, columns=self.COLUMNS, data=self.last_rows)
        if self.write_files:
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(self.COLUMNS)
            writer.writerows(self.last_rows)
            atomic_write_bytes(folder / "per_class_test_accuracy.csv", text.getvalue().encode())
            buffer = io.BytesIO()
            torch.save(confusion, buffer)
            atomic_write_bytes(folder / "confusion_matrix.pt", buffer.getvalue())
