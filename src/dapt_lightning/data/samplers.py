"""Samplers that make every epoch's data a pure function of ``(seed, epoch)`` and shard it across processes.

* ``EpochShuffleSampler`` (training): the epoch's permutation comes from a generator seeded with
  ``(seed, epoch)``, so a run resumed from an epoch-end checkpoint replays exactly the same batches. Under DDP,
  rank ``r`` takes slice ``r`` of every *global* batch, so the DDP-averaged gradient is the gradient of the same
  global batch a single process would use. The epoch is encoded in each index (``epoch * N + i``) so that the
  dataset, even inside persistent worker processes, can seed the augmentation of item ``i`` by ``(seed, epoch, i)``.
* ``ShardSampler`` (evaluation): rank ``r`` takes items ``r, r + W, ...``: every sample exactly once, no
  padding duplicates and no dropped remainder.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded by ``(seed, epoch)``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class EpochShuffleSampler(Sampler[int]):
    """Shuffled training indices for one rank, encoded as ``epoch * size + index``.

    Args:
        size: dataset length. seed: shuffling seed.
        global_batch_size: batch size summed over ranks. drop_last: drop an incomplete last global batch.
        rank, world_size: this process and the number of processes.
    """

    def __init__(
        self, size: int, seed: int, global_batch_size: int, drop_last: bool, rank: int = 0, world_size: int = 1
    ) -> None:
        if global_batch_size % world_size:
            raise ValueError(
                f"--data.batch_size {global_batch_size} is the global batch (the paper's 32) and must be divisible "
                f"by the number of processes ({world_size})"
            )
        self.size = size
        self.seed = seed
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def _local_positions(self) -> list[int]:
        usable = self.size - self.size % self.global_batch_size if self.drop_last else self.size
        positions = []
        for start in range(0, usable, self.global_batch_size):
            batch = list(range(start, min(start + self.global_batch_size, usable)))
            share = -(-len(batch) // self.world_size)  # ceil: only the last, incomplete batch is uneven
            positions.extend(batch[self.rank * share : (self.rank + 1) * share])
        return positions

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=epoch_generator(self.seed, self.epoch)).tolist()
        offset = self.epoch * self.size
        return iter([offset + order[p] for p in self._local_positions()])

    def __len__(self) -> int:
        return len(self._local_positions())


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` in order: a disjoint, complete shard for evaluation."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
