"""Batches as slices of the encoded arrays: no per-sample ``__getitem__``, no sampler.

A :class:`BatchStream` is an ``IterableDataset`` that yields whole batch dicts;
it is used with ``DataLoader(batch_size=None)`` so that Lightning never injects
a ``DistributedSampler``. The stream decides everything itself, at the start
of each pass, from values read at that moment:

* the batch size (a callback may change it between epochs);
* the epoch, for a shuffle that is new every epoch yet reproducible from (seed, epoch);
* the rank and world size: each rank takes a disjoint shard of the rows, the
  shards cover every row exactly once (no padding duplicates), and every rank
  yields the same number of batches so DDP's collectives never wait forever.

Batches hold ``batch_size`` rows, the last one of a pass fewer. Every rank
yields ``ceil(ceil(rows / world) / batch_size)`` batches; in the one case where
a rank's shard (one row shorter) would come up a batch short, that rank cuts its
shard into that many near-equal batches instead (``np.array_split``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .schema import CATEGORICAL, LABEL, NUMERIC


@dataclass
class EncodedSplit:
    """The encoded rows of one split (numpy arrays or read-only memory maps).

    ``categorical`` int32/int64 ``[n, F]``, ``numeric`` float32 ``[n, N]``, ``label`` float32 ``[n]``.
    """

    categorical: np.ndarray
    numeric: np.ndarray
    label: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.label)
        if self.categorical.shape[0] != n or self.numeric.shape[0] != n:
            raise ValueError(f"row counts differ: {self.categorical.shape}, {self.numeric.shape}, {self.label.shape}")

    def __len__(self) -> int:
        return len(self.label)

    def batch(self, rows: np.ndarray | slice) -> dict[str, torch.Tensor]:
        """The batch of ``rows`` (an index array or a slice): the batch dict of the schema contract."""
        if isinstance(rows, slice):
            # A slice of a memory map is a view of a read-only file: copy it out.
            cat = np.array(self.categorical[rows], dtype=np.int64)
            num = np.array(self.numeric[rows], dtype=np.float32)
            lab = np.array(self.label[rows], dtype=np.float32)
        else:
            cat = self.categorical[rows].astype(np.int64, copy=False)
            num = self.numeric[rows].astype(np.float32, copy=False)
            lab = self.label[rows].astype(np.float32, copy=False)
        return {CATEGORICAL: torch.from_numpy(cat), NUMERIC: torch.from_numpy(num), LABEL: torch.from_numpy(lab)}

    @classmethod
    def empty(cls, num_fields: int, num_numeric: int) -> "EncodedSplit":
        return cls(np.zeros((0, num_fields), np.int32), np.zeros((0, num_numeric), np.float32), np.zeros(0, np.float32))


def rank_and_world(trainer=None) -> tuple[int, int]:
    """``(rank, world_size)``: from the trainer when attached, else ``torch.distributed``, else ``(0, 1)``."""
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def num_batches(num_rows: int, batch_size: int, world_size: int = 1) -> int:
    """Batches EVERY rank yields for ``num_rows`` rows split over ``world_size`` ranks.

    ``ceil(ceil(num_rows / world) / batch_size)``, but never more than the
    smallest shard has rows (so no batch is empty).
    """
    if num_rows == 0:
        return 0
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_rows < world_size:
        raise ValueError(f"{num_rows} rows cannot give each of {world_size} ranks a row")
    largest = math.ceil(num_rows / world_size)
    smallest = num_rows // world_size
    return max(1, min(math.ceil(largest / int(batch_size)), smallest))


def batch_plan(
    num_rows: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
) -> list[np.ndarray] | list[slice]:
    """The batches of one rank for one pass: sorted index arrays (shuffled) or slices (in order).

    Shuffled: one permutation from ``(seed, epoch)``, identical on every rank,
    cut into ``world_size`` contiguous shards. In order: the rows themselves,
    cut the same way, served as slices (sequential reads of the memory map).

    Example:
        >>> [len(b) for b in batch_plan(10, 4, rank=1, world_size=2, shuffle=True)]
        [4, 1]
        >>> [len(b) for b in batch_plan(9, 4, rank=1, world_size=2, shuffle=True)]  # rank 0 has 5 rows: 4 + 1
        [2, 2]
        >>> batch_plan(5, 2)
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    count = num_batches(num_rows, batch_size, world_size)
    if count == 0:
        return []
    if shuffle:
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(num_rows)
        shard = np.array_split(order, world_size)[rank]
        edges = _batch_edges(len(shard), batch_size, count)
        # Sorted rows inside a batch read the memory map in order; the batch is the same set.
        return [np.sort(shard[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    start, stop = _shard_bounds(num_rows, world_size, rank)
    edges = start + _batch_edges(stop - start, batch_size, count)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _batch_edges(length: int, batch_size: int, count: int) -> np.ndarray:
    """Edges ``[count + 1]`` of ``count`` batches over ``length`` rows: full batches, then the rest."""
    if (count - 1) * batch_size < length <= count * batch_size:
        return np.minimum(np.arange(count + 1, dtype=np.int64) * batch_size, length)
    return _split_edges(length, count)  # the shorter shard of an uneven split: near-equal batches


def _split_edges(length: int, parts: int) -> np.ndarray:
    """Edges ``[parts + 1]`` of ``np.array_split(range(length), parts)``."""
    q, r = divmod(length, parts)
    sizes = np.full(parts, q, dtype=np.int64)
    sizes[:r] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def _shard_bounds(num_rows: int, world_size: int, rank: int) -> tuple[int, int]:
    edges = _split_edges(num_rows, world_size)
    return int(edges[rank]), int(edges[rank + 1])


class BatchStream(IterableDataset):
    """Yields the batch dicts of one split for one rank; ``len()`` is its number of batches.

    Args:
        split: the rows.
        batch_size: the batch size, or a function read at every ``iter``/``len``.
        shuffle: a new permutation every pass (from ``seed`` and the epoch).
        seed: shuffle seed.
        epoch: function giving the epoch at the start of a pass (called once per ``iter``).
        rank_world: function giving ``(rank, world_size)``.
    """

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int | Callable[[], int],
        shuffle: bool = False,
        seed: int = 0,
        epoch: Callable[[], int] | None = None,
        rank_world: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        self.split = split
        self._batch_size = batch_size if callable(batch_size) else (lambda b=int(batch_size): b)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self._epoch = epoch or (lambda: 0)
        self._rank_world = rank_world or rank_and_world

    @property
    def batch_size(self) -> int:
        return int(self._batch_size())

    def __len__(self) -> int:
        _, world = self._rank_world()
        return num_batches(len(self.split), self.batch_size, world)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("BatchStream builds whole batches itself: use it with num_workers=0")
        rank, world = self._rank_world()
        epoch = int(self._epoch()) if self.shuffle else 0
        for rows in batch_plan(len(self.split), self.batch_size, rank, world, self.shuffle, self.seed, epoch):
            yield self.split.batch(rows)
