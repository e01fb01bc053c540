"""Facts of the official experimental protocol that configs derive from."""

from __future__ import annotations


def official_max_epochs(dataset: str, num_shots: int) -> int:
    """Epochs of the official configs: ImageNet 50; otherwise 1 shot 50, 2 and 4 shots 100, 8 and more 200."""
    if dataset.startswith("imagenet") or num_shots == 1:
        return 50
    if num_shots in (2, 4):
        return 100
    return 200
