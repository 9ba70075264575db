"""Which videos each rank loads: the training order (epoch-seeded, sharded, padded) and the
evaluation shard (every video exactly once, no padding).

The training order depends only on (seed, epoch), so one process with global batch B and N
processes with batch B/N see the same global batches, and a resumed run sees the same order
as an uninterrupted one (`start` skips what was already trained on).

The training sampler yields `(index, epoch)` keys: the epoch reaches the dataset with every
index, so persistent DataLoader workers (started once, holding a copy of the dataset made
before the first epoch) draw each epoch's random clips exactly as a fresh worker would.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch.utils.data import Sampler


class EpochKey(NamedTuple):
    """A dataset key carrying the epoch it is drawn for."""

    index: int
    epoch: int


def epoch_key(key: int | tuple[int, int], epoch: int) -> EpochKey:
    """(index, epoch) from a sampler key: an EpochKey as is, a bare index with `epoch`."""
    return EpochKey(*key) if isinstance(key, tuple) else EpochKey(int(key), epoch)


class TrainSampler(Sampler[EpochKey]):
    """Shuffled (or class-balanced) `(index, epoch)` keys for one rank; padded so every rank has as many.

    Args:
        labels: the class of each sample (used by `balanced`).
        balanced: draw with replacement so every class is equally likely (imbalanced data).
        rank, world_size: this process's shard: positions rank, rank + world, ...
    """

    def __init__(self, labels: Sequence[int], *, seed: int = 0, balanced: bool = False,
                 rank: int = 0, world_size: int = 1):
        self.labels = torch.as_tensor(list(labels))
        self.seed, self.balanced, self.rank, self.world_size = seed, balanced, rank, world_size
        self.epoch = 0
        self.start = 0
        self.num_per_rank = -(-len(self.labels) // world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; skip the first `start` samples of this rank's shard."""
        self.epoch, self.start = epoch, start

    def global_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.labels)
        if self.balanced:
            counts = torch.bincount(self.labels).float()
            weights = (1.0 / counts)[self.labels]
            order = torch.multinomial(weights, n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        order = order.tolist()
        pad = self.num_per_rank * self.world_size - n
        return order + order[:pad]

    def __iter__(self) -> Iterator[EpochKey]:
        shard = self.global_order()[self.rank::self.world_size]
        return iter([EpochKey(i, self.epoch) for i in shard[self.start:]])

    def __len__(self) -> int:
        return max(0, self.num_per_rank - self.start)


class ShardSampler(Sampler[int]):
    """Evaluation: rank r takes videos r, r + world, r + 2 world, ...: no padding, every video exactly once."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, num_samples, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
