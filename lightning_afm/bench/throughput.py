"""CPU inference throughput, measured side by side: Zipf-like batches and an interleaved timer.

Several models are timed in one process, round by round (a few batches of each, then of the
next...), with the order rotated every round, so that load from elsewhere on the machine and
cache warmth hit them alike; a model's figure is ``batch / median batch time``.

Example:
    >>> from lightning_afm.bench.shapes import paper_shape
    >>> batches = make_batches(paper_shape("criteo", vocab_cap=100), batch=8, count=2, seed=0)
    >>> batches[0].categorical.shape, batches[0].numeric.shape
    (torch.Size([8, 26]), torch.Size([8, 13]))
    >>> model = torch.nn.Linear(13, 1)
    >>> timings = time_interleaved({"lr": Timed(lambda b: model(b.numeric), batches)}, rounds=2, warmup=1)
    >>> len(timings["lr"])
    4
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_afm.bench.shapes import PaperShape
from lightning_afm.inference import native

__all__ = ["InferenceBatch", "Timed", "zipf_ids", "make_batches", "time_interleaved", "Throughput", "summarize"]


@dataclass
class InferenceBatch:
    """One prebuilt batch: ``categorical`` ``[B, F]`` int64 ids, ``numeric`` ``[B, N]`` float32 in [0, 1]."""

    categorical: torch.Tensor
    numeric: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.categorical.shape[0])


def zipf_ids(vocab_size: int, n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` ids in ``[0, vocab_size)`` with ``P(id = i) ∝ (i + 1)^-exponent``, int64 ``[n]``.

    Id order is frequency order, most frequent first, as ``lightning_afm.data`` numbers a
    field's values (the most frequent value gets the lowest id), so the hot rows of a table
    are together at its start, as in a real encoded dataset. Drawn by inverting the exact
    truncated CDF (any exponent > 0 works, unlike ``numpy``'s ``zipf``).
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if not exponent > 0:
        raise ValueError(f"the Zipf exponent must be > 0, got {exponent}")
    cdf = np.cumsum(np.arange(1, vocab_size + 1, dtype=np.float64) ** -float(exponent))
    cdf /= cdf[-1]
    ids = np.searchsorted(cdf, rng.random(n), side="right")
    return np.minimum(ids, vocab_size - 1).astype(np.int64)  # guard the float edge u -> 1


def make_batches(shape: PaperShape, batch: int, count: int, seed: int, exponent: float = 1.0) -> list[InferenceBatch]:
    """``count`` batches of ``batch`` rows at ``shape``: Zipf ids per field, numeric uniform in [0, 1].

    Seeded: the same arguments give the same batches.
    """
    if batch < 1 or count < 1:
        raise ValueError(f"batch and count must be >= 1, got batch={batch}, count={count}")
    rng = np.random.default_rng(seed)
    rows = batch * count
    ids = np.stack([zipf_ids(v, rows, exponent, rng) for v in shape.vocab_sizes], axis=1)  # [rows, F]
    numeric = rng.random((rows, shape.num_numeric), dtype=np.float32)
    categorical = torch.from_numpy(ids)
    values = torch.from_numpy(numeric)
    return [
        InferenceBatch(categorical[i : i + batch].contiguous(), values[i : i + batch].contiguous())
        for i in range(0, rows, batch)
    ]


@dataclass
class Timed:
    """A model to time: ``forward(inputs[i])`` is one batch; ``inputs`` prebuilt, one per batch."""

    forward: Callable[[Any], Any]
    inputs: Sequence[Any]


def _matmul_macs(name: str, args: Sequence[Any]) -> int:
    """Multiply-adds of one aten call if it is a matrix product (0 otherwise)."""
    if name in ("mm", "bmm", "mv", "dot"):
        a, b = args[0], args[1]
    elif name in ("addmm", "baddbmm", "addmv", "addbmm"):
        a, b = args[1], args[2]
    elif "scaled_dot_product" in name:  # softmax(q k^T) v: two products per head
        q, k, v = args[0], args[1], args[2]
        return q.numel() * k.shape[-2] + (q.numel() // q.shape[-1]) * k.shape[-2] * v.shape[-1]
    else:
        return 0
    return a.numel() * (b.shape[-1] if b.dim() >= 2 else 1)


class _MatmulCounter(TorchDispatchMode):
    """Adds up :func:`_matmul_macs` of every aten call it sees (at the aten level, unlike
    ``FlopCounterMode``, which also installs global module hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        macs = _matmul_macs(func.overloadpacket.__name__, args)
        if not macs:
            # Composite ops (linear, matmul, einsum: undecomposed in inference mode) are split
            # into the products they run, which come back through this mode.
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        self.total += macs
        return func(*args, **kwargs)


def matmul_multiply_adds(runner: Timed) -> int:
    """Multiply-adds of the matrix products in one forward of ``runner`` on its first input.

    Counts matrix, batched-matrix and matrix-vector products and attention at the aten level,
    in inference mode; element-wise work and lookups are not counted. Their ratio between
    two structures bounds the speed-up a compute-bound CPU can give: a variant with half the
    multiply-adds gains at most about +100 % unless its products run faster. The compiled
    attention kernel is suspended while counting (the aten kernels it replaces do the same
    products, and the counter sees theirs).
    """
    counter = _MatmulCounter()
    with native.suspended(), torch.inference_mode(), counter:
        runner.forward(runner.inputs[0])
    return counter.total


def time_interleaved(
    runners: Mapping[str, Timed],
    rounds: int,
    warmup: int = 1,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per batch of every runner, measured in ``rounds`` interleaved rounds.

    First ``warmup`` untimed batches per runner. Then each round times every runner on all its
    inputs in turn; round ``r`` starts with runner ``r mod len(runners)``, so none always runs
    right after the same other one. Runs under ``torch.inference_mode``; put models in eval
    mode first.

    Returns:
        name -> ``rounds * len(inputs)`` timings in seconds.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    if not names:  # e.g. every variant refused by its runtime: nothing to time
        return times
    with torch.inference_mode():
        for name in names:
            runner = runners[name]
            for i in range(warmup):
                runner.forward(runner.inputs[i % len(runner.inputs)])
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                runner = runners[name]
                for x in runner.inputs:
                    start = time.perf_counter()
                    runner.forward(x)
                    times[name].append(time.perf_counter() - start)
            if on_round is not None:
                on_round(r)
    return times


@dataclass
class Throughput:
    """Summary of one runner's timings: samples/s from the median batch time, and the spread."""

    samples_per_s: float
    median_batch_s: float
    iqr_pct: float  # interquartile range of the batch times, in % of the median: the noise
    timed_batches: int


def summarize(times: Sequence[float], batch: int) -> Throughput:
    """``batch / median(times)``, with the interquartile range as a noise indicator."""
    if not times:
        raise ValueError("no timings to summarise")
    median = statistics.median(times)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (median, median, median)
    return Throughput(batch / median, median, 100.0 * (q3 - q1) / median, len(times))
