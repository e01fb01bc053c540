"""Few-shot sampling and base/new class subsampling, identical to Dassl/CoOp for the same seed."""

from __future__ import annotations

import math
import random
from typing import Literal

from dapt_lightning.data.types import DatasetSplits, Datum

Subsample = Literal["all", "base", "new"]


def sample_per_class(items: list[Datum], num_shots: int, rng: random.Random) -> list[Datum]:
    """Take ``num_shots`` items per class, as Dassl's ``generate_fewshot_dataset``.

    Classes are visited in order of first appearance; each draws ``rng.sample(items, K)``, or keeps every
    item when it has fewer than K. ``num_shots < 1`` returns the list unchanged (every image).
    """
    if num_shots < 1:
        return list(items)
    by_label: dict[int, list[Datum]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    sampled: list[Datum] = []
    for class_items in by_label.values():
        if len(class_items) >= num_shots:
            sampled.extend(rng.sample(class_items, num_shots))
        else:
            sampled.extend(class_items)
    return sampled


def fewshot_splits(splits: DatasetSplits, num_shots: int, seed: int) -> DatasetSplits:
    """Few-shot train and val (``min(K, 4)`` per class) from one random stream seeded with ``seed``.

    Datasets with ``fewshot_val`` False (ImageNet) keep their val list whole and draw nothing for it.
    """
    if num_shots < 1:
        return splits
    rng = random.Random(seed)
    train = sample_per_class(splits.train, num_shots, rng)
    val = sample_per_class(splits.val, min(num_shots, 4), rng) if splits.fewshot_val else list(splits.val)
    return DatasetSplits(splits.name, train, val, list(splits.test), list(splits.classnames), splits.fewshot_val)


def subsample_classes(splits: DatasetSplits, subsample: Subsample) -> DatasetSplits:
    """Keep the base (first ``ceil(n/2)`` sorted labels) or new classes, relabelled from 0, as CoOp."""
    if subsample == "all":
        return splits
    if subsample not in ("base", "new"):
        raise ValueError(f"--data.subsample must be 'all', 'base' or 'new', got {subsample!r}")
    # CoOp takes the label set from the (few-shot) train list only.
    labels = sorted({item.label for item in splits.train})
    half = math.ceil(len(labels) / 2)
    kept = labels[:half] if subsample == "base" else labels[half:]
    relabel = {old: new for new, old in enumerate(kept)}

    def keep(items: list[Datum]) -> list[Datum]:
        return [Datum(i.impath, relabel[i.label], i.classname) for i in items if i.label in relabel]

    train, val, test = keep(splits.train), keep(splits.val), keep(splits.test)
    classnames = [splits.classnames[old] for old in kept]
    return DatasetSplits(splits.name, train, val, test, classnames, splits.fewshot_val)
