"""Ranks chosen for a budget: a knapsack over the AFM spectra of every target (MLP layers and fields together).

Each target ``i`` (an MLP Linear or a field table) has the eigenvalues ``lambda_i`` of its output
covariance (AFM's statistics pass, the paper's Table 11) and costs ``cost_i`` parameters per unit
of rank (``n + m + 1`` for a Linear ``n -> m``; ``s + t`` for a table of ``s`` rows and width
``t``, plus the first MLP Linear's width when the fold makes it read the codes). Keeping rank
``k_i`` keeps the share ``v_i(k_i) = sum(lambda_i[:k_i]) / sum(lambda_i)`` of its variance. The
allocation maximises ``sum_i v_i(k_i)`` subject to ``sum_i cost_i k_i <= capacity``, every
``k_i`` at least its smallest allowed rank (1 for a field) and a multiple of its ``step`` (or its
largest rank). With every ``weight_i`` 1 (the default) each target weighs the same, so rank goes
where the variance kept per parameter is highest; a target of ``weight_i = w`` counts its kept
share ``w`` times (``sum_i w_i v_i(k_i)``). A share of a field's variance and a share of an MLP
layer's are not worth the same to the logit, so the callback builds allocations at a few MLP
weights and keeps the one the validation split scores best (:mod:`lightning_afm.callbacks.budgeting`).

* ``"greedy"``: start every target at its smallest rank and repeatedly take the step (``step``
  more components of one target) with the largest variance gained per parameter that still
  fits. The gains of a target fall with its rank (eigenvalues sorted), so this is the
  fractional knapsack's optimum up to the last step that did not fit: within one step's gain of
  the best allocation.
* ``"exact"``: dynamic programming over the targets on the Pareto front of (parameters,
  variance); exact, for problems whose front stays small (it refuses larger ones by name).

A ``kept_variance`` target instead gives each target the smallest allowed rank keeping that
share of its variance (its largest allowed rank when none does), with no budget.

A latency budget prices a rank in measured microseconds instead of parameters: a target then
carries a cost per rank choice (``costs``), which need not be proportional to the rank (a product
of width 64 can be as fast as one of width 56). Both allocators take such costs; the greedy one
then steps to the choice with the best gain per unit of cost among all larger ranks (the upper
convex hull of the target's curve), so a slow rank between two fast ones is stepped over.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Budget", "RankTarget", "Allocation", "InfeasibleBudgetError", "allocate_ranks", "rank_choices",
           "ALLOCATORS", "SELECTIONS", "DEFAULT_LINEAR_MULTIPLE", "DEFAULT_LATENCY_BATCH", "DEFAULT_SELECT_ROWS",
           "SIZES"]

ALLOCATORS = ("greedy", "exact")
#: How a size budget's allocation is chosen: ``"val"`` scores candidate allocations on the
#: validation split (:mod:`lightning_afm.callbacks.budgeting`), ``"variance"`` keeps the
#: equal-weight knapsack (every target's kept share counts the same).
SELECTIONS = ("val", "variance")
#: Validation rows each candidate allocation is scored on (``select="val"``).
DEFAULT_SELECT_ROWS = 100_000
#: Rank step of MLP Linears. ``benchmarks/bench_rank_multiple.py`` times the factored pair
#: ``n -> r -> n`` at batch 10,000 on one thread for every ``r``; see the README's "Budgeted AFM"
#: for the figures that kept 8.
DEFAULT_LINEAR_MULTIPLE = 8
#: Batch a latency budget is measured at when none is given (the paper's throughput batch).
DEFAULT_LATENCY_BATCH = 10_000
#: The exact allocator gives up beyond this many Pareto states (use "greedy").
_MAX_STATES = 200_000
#: The budget kinds, exactly one of which a Budget has.
SIZES = ("params", "ratio", "bytes", "latency_ms", "kept_variance")


class InfeasibleBudgetError(ValueError):
    """No allocation meets the budget; ``smallest`` is the smallest budget (in its unit) that one meets."""

    def __init__(self, message: str, smallest: float) -> None:
        super().__init__(message)
        self.smallest = smallest


def _positive(value: Any, name: str, integral: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Budget: {name} must be a positive number, got {value!r}")
    if integral and float(value) != int(value):
        raise ValueError(f"Budget: {name} must be a whole number, got {value!r}")
    return value


@dataclass(frozen=True)
class Budget:
    """What the ``rank="auto"`` stages of a compression must fit in; exactly one of the first five.

    Attributes:
        params: parameters of the whole model after every stage.
        ratio: ``x`` fewer parameters than the model as it comes (before the first stage).
        bytes: bytes of the whole model's parameters after every stage (at their element size).
        latency_ms: milliseconds of one forward of the whole model's inference form
            (:func:`lightning_afm.inference.optimize_for_inference`) at ``batch`` rows, measured on
            this machine with the current thread setting.
        kept_variance: no size target: each auto target keeps this share of its variance (0, 1].
        batch: rows per forward of a ``latency_ms`` budget (ignored by the others).
        multiple: MLP Linears get ranks in multiples of this (the matrix products' preferred
            widths); fields step by 1. A Linear narrower than it gets its full width at most.
        allocator: ``"greedy"`` or ``"exact"`` (see the module docstring).
        select: ``"val"`` (a size budget's allocation is chosen among candidates scored on the
            validation split right after AFM's initialisation, no finetune: the uniform pair unless
            one is better beyond the noise; the equal-weight rule when there is no validation split)
            or ``"variance"`` (the equal-weight rule). Latency and kept-variance budgets use the
            equal-weight rule.
        select_rows: validation rows each candidate is scored on (the first whole batches reaching it).

    Example:
        >>> Budget(ratio=5.0).describe()
        '5x fewer parameters'
        >>> Budget(latency_ms=20, batch=10_000).describe()
        '20 ms per batch of 10,000'
    """

    params: int | None = None
    ratio: float | None = None
    bytes: int | None = None
    latency_ms: float | None = None
    kept_variance: float | None = None
    batch: int = DEFAULT_LATENCY_BATCH
    multiple: int = DEFAULT_LINEAR_MULTIPLE
    allocator: str = "greedy"
    select: str = "val"
    select_rows: int = DEFAULT_SELECT_ROWS

    def __post_init__(self) -> None:
        given = [n for n in SIZES if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"Budget needs exactly one of {', '.join(n + '=' for n in SIZES)}; got "
                             f"{given or 'none'}; e.g. Budget(ratio=5.0) for 5x fewer parameters")
        name = given[0]
        _positive(getattr(self, name), name, integral=name in ("params", "bytes"))
        if name == "kept_variance" and self.kept_variance > 1:
            raise ValueError(f"Budget: kept_variance is a share of the variance in (0, 1], got {self.kept_variance!r}")
        if name == "ratio" and self.ratio < 1:
            raise ValueError(f"Budget: ratio is how many times fewer parameters (>= 1), got {self.ratio!r}")
        _positive(self.batch, "batch (rows per forward of a latency budget)", integral=True)
        if isinstance(self.multiple, bool) or not isinstance(self.multiple, int) or self.multiple < 1:
            raise ValueError(f"Budget: multiple must be a positive integer (rank step of MLP layers), "
                             f"got {self.multiple!r}")
        if self.allocator not in ALLOCATORS:
            raise ValueError(f"Budget: allocator must be one of {ALLOCATORS}, got {self.allocator!r}")
        if self.select not in SELECTIONS:
            raise ValueError(f"Budget: select must be one of {SELECTIONS} ('val': candidate allocations scored on "
                             f"the validation split; 'variance': the equal-weight rule), got {self.select!r}")
        _positive(self.select_rows, "select_rows (validation rows per candidate allocation)", integral=True)

    @classmethod
    def from_value(cls, value: "Budget | Mapping[str, Any] | None") -> "Budget | None":
        """A Budget from itself, a config mapping (``{"ratio": 5}``) or None."""
        if value is None or isinstance(value, Budget):
            return value
        if isinstance(value, Mapping):
            known = set(SIZES) | {"batch", "multiple", "allocator", "select", "select_rows"}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"Budget: unknown settings {unknown}; the settings are {sorted(known)}")
            return cls(**dict(value))
        raise TypeError(f"budget must be a Budget, a mapping of its settings or None, got {type(value).__name__}")

    @property
    def timed(self) -> bool:
        """Whether the budget is a measured latency (``latency_ms``)."""
        return self.latency_ms is not None

    @property
    def sized(self) -> bool:
        """Whether the budget is a size (params, ratio, bytes), not a latency or a kept-variance share."""
        return self.kept_variance is None and self.latency_ms is None

    def max_params(self, params_as_it_comes: int, bytes_per_param: int) -> int:
        """The largest parameter count of the compressed model this budget allows."""
        if self.params is not None:
            return int(self.params)
        if self.ratio is not None:
            return int(params_as_it_comes / self.ratio)
        if self.bytes is not None:
            return int(self.bytes) // int(bytes_per_param)
        raise ValueError(f"a budget of {self.describe()} has no parameter count")

    def in_own_unit(self, params: int, params_as_it_comes: int, bytes_per_param: int) -> str:
        """A parameter count said in this budget's own terms (for the infeasible-budget error)."""
        if self.ratio is not None:
            return f"ratio={params_as_it_comes / params:.4g} ({params:,} parameters)"
        if self.bytes is not None:
            return f"bytes={params * bytes_per_param:,}"
        return f"params={params:,}"

    def describe(self) -> str:
        if self.params is not None:
            return f"{int(self.params):,} parameters"
        if self.ratio is not None:
            return f"{self.ratio:g}x fewer parameters"
        if self.bytes is not None:
            return f"{int(self.bytes):,} bytes"
        if self.latency_ms is not None:
            return f"{self.latency_ms:g} ms per batch of {int(self.batch):,}"
        return f"{self.kept_variance:g} of each target's variance"


@dataclass(frozen=True)
class RankTarget:
    """One module whose rank the allocation chooses.

    Attributes:
        name: the module's dotted name.
        eigenvalues: its output covariance's eigenvalues, descending (``[m]``).
        cost: parameters per unit of rank.
        max_rank: the largest rank it allows.
        step: its ranks are multiples of ``step`` (or ``max_rank``); the smallest is
            ``min(step, max_rank)``.
        costs: the cost of each rank choice when it is not ``cost * rank`` (a latency budget's
            measured microseconds, or a dense choice's parameters); every choice of
            :func:`rank_choices` must be in it.
        choices: the allowed ranks, ascending, when not the multiples of ``step`` (the callback
            leaves out the ranks at which a factored layer would be larger than the dense one).
        weight: how many times its kept share counts in the allocation's objective (> 0).
    """

    name: str
    eigenvalues: Sequence[float]
    cost: float
    max_rank: int
    step: int = 1
    costs: Mapping[int, float] | None = None
    choices: Sequence[int] | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"target {self.name!r}: weight must be a positive number, got {self.weight!r}")
        if self.max_rank < 1 or self.step < 1 or self.cost < 0:
            raise ValueError(f"target {self.name!r}: max_rank and step must be >= 1 and cost >= 0, got "
                             f"max_rank={self.max_rank}, step={self.step}, cost={self.cost}")
        if len(self.eigenvalues) < self.max_rank:
            raise ValueError(f"target {self.name!r}: {len(self.eigenvalues)} eigenvalues for ranks up to {self.max_rank}")
        object.__setattr__(self, "eigenvalues", tuple(max(float(v), 0.0) for v in self.eigenvalues))
        if self.choices is not None:
            choices = tuple(int(k) for k in self.choices)
            if not choices or list(choices) != sorted(set(choices)) or choices[0] < 1 or choices[-1] > self.max_rank:
                raise ValueError(f"target {self.name!r}: choices must be distinct ranks in 1..{self.max_rank}, "
                                 f"ascending, got {list(self.choices)}")
            object.__setattr__(self, "choices", choices)
        if self.costs is not None:
            missing = [k for k in rank_choices(self) if k not in self.costs]
            if missing:
                raise ValueError(f"target {self.name!r}: costs has no entry for ranks {missing}")
            if any(not math.isfinite(float(c)) for c in self.costs.values()):
                raise ValueError(f"target {self.name!r}: costs must be finite numbers, got {dict(self.costs)}")

    def cost_at(self, rank: int) -> float:
        """The cost of rank ``rank``: ``costs[rank]`` when given, else ``cost * rank``."""
        return float(self.costs[rank]) if self.costs is not None else self.cost * rank

    def kept(self, rank: int) -> float:
        """Share of the variance its top ``rank`` components keep (1.0 when it has none)."""
        total = sum(self.eigenvalues)
        return 1.0 if total <= 0 else sum(self.eigenvalues[:rank]) / total


def rank_choices(target: RankTarget) -> list[int]:
    """The ranks ``target`` may get, ascending: its ``choices`` when given, else the multiples of its
    step and its largest rank."""
    if target.choices is not None:
        return list(target.choices)
    ranks = list(range(target.step, target.max_rank + 1, target.step))
    if not ranks or ranks[-1] != target.max_rank:
        ranks.append(target.max_rank)
    return ranks


@dataclass
class Allocation:
    """The chosen rank and kept variance share of each target, and their cost (``sum cost_at(k)``)."""

    ranks: dict[str, int]
    kept: dict[str, float]
    cost: float
    allocator: str
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        cost = int(self.cost) if float(self.cost).is_integer() else float(self.cost)
        return {"ranks": dict(self.ranks), "kept_variance": dict(self.kept), "cost": cost,
                "allocator": self.allocator, **self.notes}


def smallest_cost(targets: Sequence[RankTarget]) -> float:
    """Cost of every target at its smallest allowed rank."""
    return sum(t.cost_at(rank_choices(t)[0]) for t in targets)


def allocate_ranks(targets: Sequence[RankTarget], capacity: float | None = None, allocator: str = "greedy",
                   kept_variance: float | None = None) -> Allocation:
    """Ranks for ``targets``: the most variance within ``capacity`` parameters, or ``kept_variance`` each.

    Raises:
        InfeasibleBudgetError: ``capacity`` is below every target at its smallest rank (the error
            says that smallest cost).
        ValueError: neither or both of ``capacity`` and ``kept_variance``; duplicate names; an
            exact problem too large.
    """
    names = [t.name for t in targets]
    if not targets or len(set(names)) != len(names):
        raise ValueError(f"allocate_ranks needs targets with distinct names, got {names}")
    if (capacity is None) == (kept_variance is None):
        raise ValueError("give allocate_ranks either capacity= (parameters) or kept_variance= (a share)")
    if kept_variance is not None:
        ranks = {t.name: next((k for k in rank_choices(t) if t.kept(k) >= kept_variance - 1e-12), rank_choices(t)[-1])
                 for t in targets}
        return _allocation(targets, ranks, f"kept_variance={kept_variance:g}")
    least = smallest_cost(targets)
    if capacity < least:
        raise InfeasibleBudgetError(
            f"no ranks fit in {capacity:,} (cost units: parameters, or microseconds for a latency): every "
            f"target at its smallest rank already takes {least:,}", smallest=least)
    if allocator == "greedy":
        return _allocation(targets, _greedy(targets, capacity), allocator)
    if allocator == "exact":
        return _allocation(targets, _exact(targets, capacity), allocator)
    raise ValueError(f"allocator must be one of {ALLOCATORS}, got {allocator!r}")


def _allocation(targets: Sequence[RankTarget], ranks: dict[str, int], allocator: str) -> Allocation:
    return Allocation(ranks=ranks, kept={t.name: t.kept(ranks[t.name]) for t in targets},
                      cost=sum(t.cost_at(ranks[t.name]) for t in targets), allocator=allocator)


def _best_step(target: RankTarget, ranks: list[int], at: int, room: float) -> tuple[float, int, float] | None:
    """The next choice after ``ranks[at]`` with the largest gain per unit of cost that fits in ``room``.

    Returns ``(gain per cost, its position, added cost)``; a choice that costs nothing more (or
    less) and keeps no less comes first. None when no larger choice fits. With costs
    proportional to the rank this is always the next choice (the gains fall with the rank).
    """
    best = None
    base_cost, base_kept = target.cost_at(ranks[at]), target.kept(ranks[at])
    for j in range(at + 1, len(ranks)):
        added = target.cost_at(ranks[j]) - base_cost
        gain = target.weight * (target.kept(ranks[j]) - base_kept)
        if added > room:
            continue
        ratio = math.inf if added <= 0 else gain / added
        if best is None or ratio > best[0] or (ratio == math.inf and best[0] == math.inf):
            best = (ratio, j, added)  # among free steps the largest rank: it keeps the most
    return best


def _greedy(targets: Sequence[RankTarget], capacity: float) -> dict[str, int]:
    choices = {t.name: rank_choices(t) for t in targets}
    position = {t.name: 0 for t in targets}
    spent = smallest_cost(targets)
    heap: list[tuple[float, int, int, float]] = []  # (-gain per cost, target order, position to go to, added)

    def push(i: int) -> None:
        t = targets[i]
        step = _best_step(t, choices[t.name], position[t.name], capacity - spent)
        if step is not None:
            heapq.heappush(heap, (-step[0], i, step[1], step[2]))

    for i in range(len(targets)):
        push(i)
    while heap:
        _, i, to, added = heapq.heappop(heap)
        if spent + added > capacity:
            push(i)  # that step no longer fits: the best one that does (none: this target stops here)
            continue
        spent += added
        position[targets[i].name] = to
        push(i)
    return {t.name: choices[t.name][position[t.name]] for t in targets}


def _exact(targets: Sequence[RankTarget], capacity: float) -> dict[str, int]:
    # states: (cost, kept, ranks) on the Pareto front, ascending in cost and strictly in kept
    states: list[tuple[float, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for t in targets:
        grown = [(c + t.cost_at(k), v + t.weight * t.kept(k), ranks + (k,))
                 for c, v, ranks in states for k in rank_choices(t) if c + t.cost_at(k) <= capacity]
        grown.sort(key=lambda s: (s[0], -s[1]))
        states = []
        for state in grown:
            if not states or state[1] > states[-1][1] + 1e-15:
                states.append(state)
        if len(states) > _MAX_STATES:
            raise ValueError(f"the exact allocation has more than {_MAX_STATES:,} candidate allocations; "
                             "use Budget(allocator='greedy')")
    best = max(states, key=lambda s: s[1])
    return {t.name: k for t, k in zip(targets, best[2])}
