"""What a compression will cost, in parameters, as an affine function of each target's rank.

A target's replacement has ``cost * k + constant`` parameters at rank ``k`` (its kind's
:meth:`~lightning_afm.compress.registry.CompressionKind.structure` of the entry it would record,
read at two ranks: no factors computed). A fold adds the first MLP Linear's ``out`` columns per
code and removes its ``t`` columns per field. The model after compression then has
``params_now + sum_i (cost_i k_i + change_i)`` parameters, which a budget's allocation
(:mod:`.budget`) bounds.

A latency budget prices a rank in measured microseconds instead (:func:`rank_times`, with the
products timed by :class:`.timing.ProductTimer`): the time is not affine in the rank (the matrix
products have preferred widths), so each rank choice gets its own figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from lightning_afm.compress.registry import kind_for_module
from lightning_afm.compress.surgery import get_submodule
from lightning_afm.compress.timing import ProductTimer

__all__ = ["Price", "price_targets", "rank_times", "dense_us", "fold_us_per_code", "MAX_TIMED_RANKS"]

#: Rank choices of one target timed at most; the others are interpolated between them.
MAX_TIMED_RANKS = 12


@dataclass(frozen=True)
class Price:
    """Parameters a target adds at rank ``k``: ``cost * k + change`` (``change`` < 0: what goes away).

    Attributes:
        name: the target's dotted name.
        cost: parameters per unit of rank.
        change: the constant part, minus the parameters of the module it replaces.
        max_rank: the largest rank the target allows.
        is_table: an embedding table (ranks step by 1) rather than a Linear.
    """

    name: str
    cost: int
    change: int
    max_rank: int
    is_table: bool

    def added(self, rank: int) -> int:
        return self.cost * int(rank) + self.change

    def saving_ranks(self, step: int) -> list[int]:
        """The ranks (multiples of ``step`` for a Linear, every rank for a table) at which the
        replacement has fewer parameters than what it replaces, ascending.

        Past the break-even rank (``n m / (n + m)`` for a Linear ``n -> m``; about ``s t / (s + t)``
        for a table of ``s`` rows and width ``t``, more where a fold also narrows the first MLP
        Linear) the factors hold more parameters than the dense module: empty when even the
        smallest rank does. The cost grows with the rank, so these are the ranks up to the break-even.
        """
        step = 1 if self.is_table else int(step)
        return [k for k in range(step, self.max_rank + 1, step) if self.added(k) < 0]


def price_targets(model: nn.Module, names: Sequence[str], method: str, fold_width: int | None = None) -> list[Price]:
    """The :class:`Price` of compressing each of ``names`` by ``method``.

    ``fold_width``: the ``out`` width of the first MLP Linear when these targets are field tables
    whose projections a fold will move into it (None: no fold).
    """
    out = []
    for name in names:
        module = get_submodule(model, name)
        kind = kind_for_module(module, method, name)
        one, two = (kind.structure(kind.planned_entry(name, module, method, k)).parameters for k in (1, 2))
        cost, constant = two - one, 2 * one - two
        is_table = isinstance(module, nn.Embedding)
        change = constant - sum(p.numel() for p in module.parameters())
        if fold_width is not None and is_table:
            cost += fold_width
            change -= fold_width * module.embedding_dim
        out.append(Price(name, int(cost), int(change), int(kind.max_rank(module)), is_table))
    return out


def _timed_ranks(choices: Sequence[int], up_to: int) -> list[int]:
    """At most :data:`MAX_TIMED_RANKS` of ``choices`` (ascending), spread geometrically, the first one
    included, none beyond the first choice at or above ``up_to``."""
    stop = next((i for i, k in enumerate(choices) if k >= up_to), len(choices) - 1)
    kept = list(choices[: stop + 1])
    if len(kept) <= MAX_TIMED_RANKS:
        return kept
    at = np.unique(np.round(np.geomspace(1, len(kept), MAX_TIMED_RANKS)).astype(int) - 1)
    return [kept[i] for i in at]


def _monotone(values: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators): a wider
    product never takes less time, so a dip below an earlier rank is measurement noise (a
    spike on a loaded machine) and is averaged with its neighbours rather than trusted."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, c2), (m1, c1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(int(c))]


def _interpolate(timed: dict[int, float], choices: Sequence[int]) -> dict[int, float]:
    """Times of every choice from the timed ones (made non-decreasing): linear between them, and
    beyond the last with the slope of the last two (a product's time grows about linearly with
    its width)."""
    ks = sorted(timed)
    ys = _monotone([timed[k] for k in ks])
    slope = (ys[-1] - ys[-2]) / (ks[-1] - ks[-2]) if len(ks) > 1 else 0.0
    out = {}
    for k in choices:
        out[k] = float(ys[-1] + max(slope, 0.0) * (k - ks[-1])) if k > ks[-1] else float(np.interp(k, ks, ys))
    return out


def fold_us_per_code(timer: ProductTimer, narrow: int, wide: int, out_features: int) -> float:
    """Microseconds per code column the folded first MLP Linear (``[B, K] @ [K, out]``) reads, from
    its time at ``narrow`` and ``wide`` columns (the fields' smallest and largest total widths)."""
    if wide <= narrow:
        return 0.0
    added = timer.product_us(wide, out_features) - timer.product_us(narrow, out_features)
    return max(added, 0.0) / (wide - narrow)


def rank_times(model: nn.Module, name: str, choices: Sequence[int], timer: ProductTimer,
               us_per_code: float | None = None) -> dict[int, float]:
    """Measured microseconds of target ``name``'s factored products at each rank of ``choices``.

    A Linear ``n -> m``: the factored pair ``n -> k -> m``, timed up to the rank where it does as
    many multiply-adds as the dense layer (``k = n m / (n + m)``) and extrapolated beyond. A
    table: the gather of its codes, plus ``us_per_code * k`` when a fold makes the first MLP
    Linear read them (None: its own projection ``k -> t``).
    """
    module = get_submodule(model, name)
    if isinstance(module, nn.Linear):
        n, m = module.in_features, module.out_features
        ranks = _timed_ranks(choices, up_to=-(-n * m // (n + m)))
        return _interpolate({k: timer.linear_pair_us(n, k, m) for k in ranks}, choices)
    if isinstance(module, nn.Embedding):
        rows, width = module.weight.shape
        ranks = _timed_ranks(choices, up_to=max(choices))
        if us_per_code is None:
            timed = {k: timer.gather_us(rows, k) + timer.product_us(k, width) for k in ranks}
        else:
            timed = {k: timer.gather_us(rows, k) + us_per_code * k for k in ranks}
        return _interpolate(timed, choices)
    raise ValueError(f"a latency budget times factored Linear and Embedding targets; {name!r} is a "
                     f"{type(module).__name__}")


def dense_us(model: nn.Module, name: str, timer: ProductTimer) -> float:
    """Measured microseconds of target ``name`` left dense: a Linear's one product ``[B, n] @ [n, m]``,
    a table's gather of its full rows (the factored ranks slower than this are never chosen)."""
    module = get_submodule(model, name)
    if isinstance(module, nn.Linear):
        return timer.product_us(module.in_features, module.out_features)
    if isinstance(module, nn.Embedding):
        rows, width = module.weight.shape
        return timer.gather_us(rows, width)
    raise ValueError(f"a latency budget times factored Linear and Embedding targets; {name!r} is a "
                     f"{type(module).__name__}")
