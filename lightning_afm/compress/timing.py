"""Measured time of the products a factored structure runs, for a latency budget.

A latency budget (:class:`~lightning_afm.compress.budget.Budget` ``latency_ms=``) prices each rank
choice of a target in microseconds measured here, on this machine, with the current thread
setting and device, at the budget's batch:

* a factored Linear ``n -> k -> m``: ``addmm(b2, addmm(b1, x, V), U)`` with ``x`` ``[B, n]``,
  ``V`` ``[n, k]``, ``U`` ``[k, m]`` (the two products of :class:`~.modules.LowRankLinear`);
* a factored table of ``s`` rows at code width ``k``: the gather of ``B`` rows of ``[s, k]``;
* one product ``[B, k] @ [k, m]`` (a table's projection, or the folded first MLP Linear reading
  ``k`` code columns).

Each distinct shape is timed once per :class:`ProductTimer` (the callback keeps one for a fit).
A gather is timed on at most :data:`MAX_TIMED_ROWS` rows: beyond a table larger than the caches
every lookup misses alike, and filling a full-size table for each rank would cost more than the
fit's statistics pass.
Times are medians of several runs after a warm-up; inputs are fixed random values (no zeros or
denormals, which some CPUs run at a different speed).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["median_ms", "ProductTimer", "MAX_TIMED_ROWS"]

#: Rows of the largest table a gather is timed on (64 MiB at width 16 in float32).
MAX_TIMED_ROWS = 1 << 20


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device | str = "cpu", min_repeats: int = 5,
              max_repeats: int = 15, min_total_s: float = 0.05, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` over at least ``min_repeats`` runs (more, up to ``max_repeats``,
    until ``min_total_s`` seconds were timed), after ``warmup`` untimed runs (first-call costs:
    allocations, thread pools)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times: list[float] = []
    while len(times) < min_repeats or (sum(times) < min_total_s and len(times) < max_repeats):
        started = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)


class ProductTimer:
    """Microseconds of the products of factored structures at ``batch`` rows, each shape timed once.

    Args:
        batch: rows per forward (``B``).
        device: where to run (the model's device).
        dtype: the model's floating type.
        seed: the random inputs' seed.
    """

    def __init__(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> None:
        if int(batch) < 1:
            raise ValueError(f"ProductTimer: batch must be a positive number of rows, got {batch!r}")
        self.batch = int(batch)
        self.device = torch.device(device)
        self.dtype = dtype
        self._generator = torch.Generator().manual_seed(seed)
        self._cache: dict[tuple, float] = {}

    @property
    def shapes_timed(self) -> int:
        return len(self._cache)

    def _random(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self._generator, dtype=self.dtype).to(self.device)

    def _time(self, key: tuple, make: Callable[[], Callable[[], object]]) -> float:
        if key not in self._cache:
            with torch.inference_mode():
                self._cache[key] = 1000.0 * median_ms(make(), self.device)
        return self._cache[key]

    def linear_pair_us(self, n: int, k: int, m: int) -> float:
        """``x [B, n] -> [B, k] -> [B, m]``: the two products (and biases) of a factored Linear."""
        def make() -> Callable[[], object]:
            x, v, u = self._random(self.batch, n), self._random(n, k), self._random(k, m)
            b1, b2 = self._random(k), self._random(m)
            return lambda: torch.addmm(b2, torch.addmm(b1, x, v), u)

        return self._time(("pair", n, k, m), make)

    def product_us(self, k: int, m: int) -> float:
        """``[B, k] @ [k, m]`` with a bias."""
        def make() -> Callable[[], object]:
            x, w, b = self._random(self.batch, k), self._random(k, m), self._random(m)
            return lambda: torch.addmm(b, x, w)

        return self._time(("product", k, m), make)

    def gather_us(self, rows: int, k: int) -> float:
        """``B`` rows gathered from a ``[rows, k]`` table (uniform ids; at most :data:`MAX_TIMED_ROWS` rows)."""
        rows = min(int(rows), MAX_TIMED_ROWS)

        def make() -> Callable[[], object]:
            table = self._random(rows, k)
            ids = torch.randint(0, rows, (self.batch,), generator=self._generator).to(self.device)
            return lambda: F.embedding(ids, table)

        return self._time(("gather", rows, k), make)
