"""Which samples each rank and DataLoader worker reads in an epoch (pure, no I/O).

The plan is computed from the number of samples alone, identically on every rank, so no rank
talks to another: a seeded permutation of ``range(num_samples)`` for the epoch, dealt
round-robin to ranks, cut into the same number of batches on every rank, and the batches of a
rank dealt round-robin to its workers. See docs/consume.md, *Splitting*.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["epoch_order", "rank_batches", "worker_batches"]


def epoch_order(num_samples: int, *, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """Sample indices in the order of ``epoch``: ``arange`` or a permutation seeded by ``(seed, epoch)``."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF])
    return rng.permutation(num_samples).astype(np.int64)


def _batch_sizes(count: int, num_batches: int, batch_size: int) -> list[int]:
    """``num_batches`` sizes summing to ``count``, each in ``1..batch_size``: full batches first."""
    sizes = []
    remaining = count
    for left in range(num_batches, 0, -1):
        size = min(batch_size, remaining - (left - 1))
        sizes.append(size)
        remaining -= size
    return sizes


def rank_batches(order: np.ndarray, *, rank: int, world_size: int, batch_size: int,
                 drop_last: bool) -> list[np.ndarray]:
    """The batches (arrays of sample indices) of ``rank`` for an epoch whose order is ``order``.

    Every rank gets the same number of batches:

    * ``drop_last=True``: ``len(order) // (world_size * batch_size)`` full batches; the samples
      after the last full round are not read this epoch.
    * ``drop_last=False``: every sample exactly once, in ``ceil(ceil(N / world_size) / batch_size)``
      batches per rank; a rank's last batches may be smaller (never empty). Only when there are
      too few samples for that (fewer samples than ranks, or ``batch_size=1`` with ``N`` not a
      multiple of ``world_size``) the order is extended cyclically with its first samples, so a
      few samples are read twice (DistributedSampler's padding).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = len(order)
    if total == 0:
        return []
    if drop_last:
        per_rank = (total // (world_size * batch_size)) * batch_size
        mine = order[rank::world_size][:per_rank]
        return [mine[i:i + batch_size] for i in range(0, per_rank, batch_size)]
    num_batches = math.ceil(math.ceil(total / world_size) / batch_size)
    if total // world_size < num_batches:  # some rank could not fill its batches: pad cyclically
        order = np.resize(order, world_size * num_batches)
    mine = order[rank::world_size]
    batches, start = [], 0
    for size in _batch_sizes(len(mine), num_batches, batch_size):
        batches.append(mine[start:start + size])
        start += size
    return batches


def worker_batches(batches: list[np.ndarray], *, worker: int, num_workers: int) -> list[np.ndarray]:
    """The batches of one DataLoader worker: every ``num_workers``-th, starting at ``worker``.

    A worker may get none (more workers than batches); it then ends at once, which the DataLoader
    handles, so no rank waits on it.
    """
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise ValueError(f"worker must be in 0..num_workers-1, got worker={worker}, num_workers={num_workers}")
    return batches[worker::num_workers]
