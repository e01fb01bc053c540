"""``dapt predict`` output: one CSV row per image with its true label (where known) and the top classes with their
probabilities; the files that could not be read, each with its reason, in a second CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info

from dapt_lightning.callbacks.paths import output_folder
from dapt_lightning.data.image_files import UNREADABLE, image_problem
from dapt_lightning.storage import atomic_write_bytes

PREDICTIONS_FILE = "predictions.csv"
SKIPPED_FILE = "skipped.csv"
SHOWN_SKIPPED = 10
"""How many skipped files the log lists one by one (all of them are in ``skipped.csv``)."""


class PredictionWriter(L.Callback):
    """Writes ``predictions.csv`` next to the run (rank zero, after gathering every process's rows).

    Columns: ``image``, ``label`` and ``label_name`` (the true class, empty where unknown), then ``top{k}`` and
    ``top{k}_probability`` for the ``top_k`` most probable classes, most probable first. Files that could not be
    decoded are left out of it and listed with their reasons in ``skipped.csv`` (and the log): :attr:`skipped`.

    Args:
        top_k: classes per image (at most the number of classes).
        enabled: write the file.
    """

    def __init__(self, top_k: int = 5, enabled: bool = True) -> None:
        if top_k < 1:
            raise ValueError(f"--predictions.top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.enabled = enabled
        self._rows: list[list[Any]] = []
        self._skipped: list[str] = []
        self.path: Path | None = None
        self.skipped: list[tuple[str, str]] = []
        """``(file, reason)`` of each image the last prediction could not read."""

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows, self._skipped, self.skipped = [], [], []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        if not self.enabled or not isinstance(outputs, dict) or "probabilities" not in outputs:
            return
        classnames = list(pl_module.model.classnames)
        paths = trainer.datamodule.predict_paths
        probabilities, classes = outputs["probabilities"].float().topk(min(self.top_k, len(classnames)), dim=-1)
        for index, label, top_p, top_c in zip(
            outputs["index"].tolist(), outputs["label"].tolist(), probabilities.tolist(), classes.tolist(), strict=True
        ):
            if label == UNREADABLE:
                self._skipped.append(paths[index])
                continue
            known = 0 <= label < len(classnames)
            row: list[Any] = [paths[index], label if known else "", classnames[label] if known else ""]
            for class_index, probability in zip(top_c, top_p, strict=True):
                row += [classnames[class_index], f"{probability:.6f}"]
            self._rows.append(row)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        rows, skipped = self._rows, self._skipped
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[tuple[list[list[Any]], list[str]] | None] = [None] * trainer.world_size
            dist.all_gather_object(gathered, (rows, skipped))
            rows = [row for part in gathered for row in (part or ([], []))[0]]
            skipped = [path for part in gathered for path in (part or ([], []))[1]]
        self.skipped = [(path, image_problem(path) or "could not be decoded") for path in sorted(skipped)]
        self.path = output_folder(trainer) / PREDICTIONS_FILE
        if trainer.is_global_zero:
            top = min(self.top_k, len(pl_module.model.classnames))
            header = ["image", "label", "label_name"]
            header += [name for k in range(1, top + 1) for name in (f"top{k}", f"top{k}_probability")]
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(header)
            writer.writerows(sorted(rows, key=lambda row: row[0]))
            atomic_write_bytes(self.path, text.getvalue().encode())
            rank_zero_info(f"Predictions for {len(rows)} images: {self.path}")
            if self.skipped:
                self._report_skipped(self.path.parent / SKIPPED_FILE, len(rows))
        self._rows, self._skipped = [], []

    def _report_skipped(self, path: Path, classified: int) -> None:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["image", "reason"])
        writer.writerows(self.skipped)
        atomic_write_bytes(path, text.getvalue().encode())
        lines = [f"  {image}: {reason}" for image, reason in self.skipped[:SHOWN_SKIPPED]]
        if len(self.skipped) > SHOWN_SKIPPED:
            lines.append(f"  ... and {len(self.skipped) - SHOWN_SKIPPED} more")
        rank_zero_info(
            f"Skipped {len(self.skipped)} of {len(self.skipped) + classified} files (not classified), listed with "
            f"their reasons in {path}:\n" + "\n".join(lines)
        )


def read_predictions(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``predictions.csv``."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
