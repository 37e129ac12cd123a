"""The callback's budget: price the stages to come, check the budget can be met, choose the auto ranks.

The ranks of every ``rank="auto"`` target (MLP Linears and field tables together) are chosen
once, at the start of the first auto stage, from one statistics pass over all of them
(:mod:`lightning_afm.compress.budget`); the stages then swap at those ranks (each stage's own
statistics pass, after the earlier finetunes, computes its factors). Fixed-rank stages still to
come count at their rank.

A latency budget (``Budget(latency_ms=, batch=)``) is priced in measured time: the smallest
structure (every auto target at its smallest rank, the fixed stages at theirs, the lookups and
the rest of the forward) is built on a copy and its inference form timed
(:mod:`.latency`); each auto target's rank choices cost the measured time of their products
above its smallest rank (:func:`lightning_afm.compress.pricing.rank_times`). The allocation's
structure is then built and timed before any module changes; if it overruns (the products do
not add up exactly), the allocation is redone with its prices scaled by how much the try's
measured time exceeded its predicted one (:func:`_room_after_overrun`).

A size budget with ``select="val"`` (the default) does not trust the equal-weight knapsack alone:
it maximises the sum of kept variance *shares*, so 26 field tables outvote 2 MLP layers, although
a share of a table's variance and a share of a layer's are not worth the same to the logit.
:func:`candidate_allocations` builds the knapsack at a few weights of the MLP layers' shares
(:data:`MLP_WEIGHTS`) and the uniform rank pair that fits (:func:`lightning_afm.callbacks.uniform.choose_pair`);
the callback AFM-initialises each on a copy of the model from the statistics already collected
(no finetune), scores it on the first ``select_rows`` validation rows, and keeps the uniform pair
unless a candidate's logloss is lower by more than the noise of those rows (:func:`select_allocation`).
Without a validation split it keeps the equal-weight rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from lightning_afm import compress
from lightning_afm.compress.budget import (Allocation, Budget, InfeasibleBudgetError, RankTarget, allocate_ranks,
                                           rank_choices)
from lightning_afm.compress.pricing import Price, dense_us, fold_us_per_code, price_targets, rank_times
from lightning_afm.compress.timing import ProductTimer
from lightning_afm.callbacks.uniform import choose_pair
from lightning_afm.callbacks.selection import compare
from lightning_afm.callbacks.stages import CompressionStage

__all__ = ["PlannedStage", "BudgetPrices", "price_stages", "check_budget", "allocate_for_budget",
           "smallest_ranks", "check_latency", "latency_times", "allocate_for_latency", "LATENCY_RETRIES",
           "MLP_WEIGHTS", "candidate_allocations", "select_allocation"]

#: Allocations tried for a latency budget before keeping the last (each measured on a copy).
LATENCY_RETRIES = 3
#: Weights of the MLP layers' kept shares (the tables' stay 1) of the candidate allocations a
#: size budget scores on the validation split; 1 is the equal-weight rule.
MLP_WEIGHTS = (1.0, 2.0, 4.0, 8.0, 16.0)
#: Microseconds a unit of rank costs at least (measured times below it are noise).
_FLOOR_US = 1e-3


@dataclass(frozen=True)
class PlannedStage:
    """A stage still to come: its targets and, for a table stage that will fold, the first MLP Linear's width."""

    stage: CompressionStage
    names: Sequence[str]
    fold_width: int | None = None


@dataclass(frozen=True)
class BudgetPrices:
    """The auto targets' prices and the fixed part: the parameters after compression are
    ``params_now + fixed + sum_i added_i(k_i)`` over the auto targets (:meth:`added`).

    Each auto target's rank choices (:meth:`options`) stop at its break-even rank
    (:meth:`Price.saving_ranks`): a factored layer larger than the dense one is never built.
    Instead, a target may stay dense (its choice "rank = its full width" means: not swapped,
    nothing added, all its variance kept), unless it is a table a fold will make the first MLP
    Linear read (``folded``): the fold needs every table's codes, so those keep their ranks up to
    the break-even only (the smallest rank when none saves, as with a width-1 table).
    """

    auto: list[Price]
    fixed: int
    params_now: int
    params_as_it_comes: int
    bytes_per_param: int
    folded: frozenset[str] = frozenset()

    def can_stay_dense(self, price: Price) -> bool:
        return price.name not in self.folded

    def is_dense(self, price: Price, rank: int) -> bool:
        """Whether choice ``rank`` of ``price`` is its dense module (its full width, where it may stay dense)."""
        return int(rank) == price.max_rank and self.can_stay_dense(price)

    def options(self, price: Price, step: int) -> list[int]:
        """``price``'s rank choices, ascending: the ranks that save parameters, then its full width
        (dense) where it may stay dense."""
        saving = price.saving_ranks(step)
        if self.can_stay_dense(price):  # (a factored layer at full width never saves: its choice means dense)
            return [k for k in saving if k < price.max_rank] + [price.max_rank]
        return saving or [1 if price.is_table else min(step, price.max_rank)]

    def added(self, price: Price, rank: int) -> int:
        """Parameters choice ``rank`` of ``price`` adds (0 for its dense choice)."""
        return 0 if self.is_dense(price, rank) else price.added(rank)

    def params_at(self, ranks: Mapping[str, int]) -> int:
        """The model's parameters after compression with the auto targets at ``ranks`` (those not in it dense)."""
        by_name = {p.name: p for p in self.auto}
        return self.params_now + self.fixed + sum(self.added(by_name[n], k) for n, k in ranks.items())

    def smallest_params(self, step: int) -> int:
        return self.params_at({p.name: self.options(p, step)[0] for p in self.auto})

    def targets_capacity(self, budget: Budget) -> int:
        """Parameters left for ``sum_i (added_i(k_i) - change_i)`` under ``budget``."""
        allowed = budget.max_params(self.params_as_it_comes, self.bytes_per_param)
        return allowed - self.params_now - self.fixed - sum(p.change for p in self.auto)


def smallest_ranks(prices: BudgetPrices, step: int) -> dict[str, int]:
    """Every factored auto target's smallest allowed rank (1 for a field, ``step`` or its width for a
    Linear); a target whose smallest saving choice is none (it stays dense) is left out."""
    ranks = {p.name: prices.options(p, step)[0] for p in prices.auto}
    return {p.name: ranks[p.name] for p in prices.auto if not prices.is_dense(p, ranks[p.name])}


def price_stages(model: nn.Module, planned: Sequence[PlannedStage], params_as_it_comes: int) -> BudgetPrices:
    """What the stages to come cost: per unit of rank for the auto targets, in total for the fixed ones."""
    auto: list[Price] = []
    folded: set[str] = set()
    fixed = 0
    for p in planned:
        prices = price_targets(model, p.names, p.stage.method, p.fold_width)
        if p.stage.auto_rank:
            auto.extend(prices)
            if p.fold_width is not None:
                folded.update(price.name for price in prices if price.is_table)
        else:
            fixed += sum(price.added(p.stage.rank) for price in prices)
    first = next(iter(model.parameters()))
    return BudgetPrices(auto, fixed, compress.parameter_count(model), int(params_as_it_comes), first.element_size(),
                        frozenset(folded))


def check_budget(budget: Budget, prices: BudgetPrices) -> None:
    """An error saying the smallest feasible budget when no allocation can meet ``budget``."""
    if not budget.sized:
        return
    least = prices.smallest_params(budget.multiple)
    allowed = budget.max_params(prices.params_as_it_comes, prices.bytes_per_param)
    if allowed < least:
        smallest = budget.in_own_unit(least, prices.params_as_it_comes, prices.bytes_per_param)
        raise InfeasibleBudgetError(
            f"the budget ({budget.describe()}: at most {allowed:,} parameters) cannot be met: rank 1 for every "
            f"field and rank {budget.multiple} for every MLP layer (dense where that saves nothing) already leaves "
            f"{least:,}; "
            f"the smallest feasible budget is {smallest}", smallest=least)


def allocate_for_budget(budget: Budget, prices: BudgetPrices,
                        statistics: Mapping[str, compress.OutputStatistics], mlp_weight: float = 1.0) -> Allocation:
    """The auto targets' ranks for ``budget`` from their statistics (all of them, one pass); the MLP
    layers' kept shares count ``mlp_weight`` times in the knapsack (1: the equal-weight rule)."""
    if budget.timed:
        raise ValueError(f"a latency budget ({budget.describe()}) is measured: use allocate_for_latency")
    check_budget(budget, prices)
    targets = _rank_targets(budget, prices, statistics)
    if budget.sized:
        tables = {p.name for p in prices.auto if p.is_table}
        weighted = [t if t.name in tables else dataclasses.replace(t, weight=mlp_weight) for t in targets]
        allocation = allocate_ranks(weighted, prices.targets_capacity(budget), budget.allocator)
    else:
        allocation = allocate_ranks(targets, kept_variance=budget.kept_variance)
    return _finish(allocation, prices, budget)


def _finish(allocation: Allocation, prices: BudgetPrices, budget: Budget) -> Allocation:
    """Dense choices set apart and the budget block's notes (budget, params) added."""
    _set_dense_apart(allocation, prices)
    allocation.notes.update(budget=budget.describe(), params=prices.params_at(allocation.ranks),
                            params_as_it_comes=prices.params_as_it_comes)
    return allocation


def _uniform_allocation(budget: Budget, prices: BudgetPrices,
                        statistics: Mapping[str, compress.OutputStatistics]) -> Allocation | None:
    """The uniform pair nearest the budget from below (one MLP rank, one table rank; the pareto
    recipe's rule) as an allocation, or None when none fits or the targets are not both kinds.

    A rank past a target's break-even becomes its dense module where it may stay dense, else its
    largest saving rank (what the budget allows; the count is checked again after that)."""
    allowed = budget.max_params(prices.params_as_it_comes, prices.bytes_per_param)
    try:
        pair = choose_pair(prices.params_now + prices.fixed, prices.auto, allowed, budget.multiple)
    except ValueError:  # no pair fits, or no MLP or no table targets: no uniform candidate
        return None
    ranks = {}
    for p in prices.auto:
        options = prices.options(p, budget.multiple)
        wanted = min(pair.emb if p.is_table else pair.mlp, p.max_rank)
        ranks[p.name] = wanted if wanted in options else max([k for k in options if k <= wanted] or options[:1])
    if prices.params_at(ranks) > allowed:
        return None
    targets = {t.name: t for t in _rank_targets(budget, prices, statistics)}
    allocation = Allocation(ranks=ranks, kept={n: targets[n].kept(k) for n, k in ranks.items()},
                            cost=sum(targets[n].cost_at(k) for n, k in ranks.items()), allocator="uniform")
    return _finish(allocation, prices, budget)


def candidate_allocations(budget: Budget, prices: BudgetPrices,
                          statistics: Mapping[str, compress.OutputStatistics]) -> list[tuple[str, Allocation]]:
    """A size budget's candidate allocations, distinct, labelled: the knapsack at each MLP weight of
    :data:`MLP_WEIGHTS` (``"mlp_weight=W"``; the first is the equal-weight rule) and the uniform pair
    that fits (``"uniform"``, when one does)."""
    if not budget.sized:
        raise ValueError(f"candidate allocations are for a size budget, not {budget.describe()}")
    found: list[tuple[str, Allocation]] = []
    options = [(f"mlp_weight={w:g}", allocate_for_budget(budget, prices, statistics, w)) for w in MLP_WEIGHTS]
    uniform = _uniform_allocation(budget, prices, statistics)
    if uniform is not None:
        options.append(("uniform", uniform))
    for label, allocation in options:
        key = (allocation.ranks, allocation.notes["dense"])
        if all((a.ranks, a.notes["dense"]) != key for _, a in found):
            found.append((label, allocation))
    return found


def select_allocation(candidates: Sequence[tuple[str, Allocation]], score: Callable[[Allocation], Mapping],
                      reference: str = "uniform", significance: float = 1.0) -> tuple[Allocation, list[dict]]:
    """The candidate the validation split prefers, and one record per candidate.

    ``score(allocation)`` gives ``{"val_auc", "val_logloss"}`` and, for the paired test, the
    per-row ``"logits"`` and ``"labels"`` (the same rows for every candidate). The candidate
    labelled ``reference`` (the uniform pair; the first candidate, the equal-weight rule, when there
    is none or its score is not finite) is kept unless another is ``"better"`` by
    :func:`~lightning_afm.callbacks.selection.compare`: logloss lower by more than ``significance``
    paired standard errors, AUC no lower; among those, the lowest logloss. A gain the validation
    rows cannot tell from noise is no reason to leave the reference: picked on such a gain, a
    candidate lost to uniform ranks on the test split after the finetune (the 1M-row file, seed 2,
    in the README).

    Records: ``{"label", "ranks", "dense", "params", "val_auc", "val_logloss", "verdict"}``
    (``verdict`` against the reference: better, tie, worse, or reference). The winner's notes get
    ``selected`` (its label), ``reference`` and ``candidates`` (the records).
    """
    if not candidates:
        raise ValueError("select_allocation needs at least one candidate allocation")
    scores = [dict(score(allocation)) for _, allocation in candidates]
    labels = [label for label, _ in candidates]
    ref = labels.index(reference) if reference in labels else 0
    if not math.isfinite(float(scores[ref]["val_logloss"])):
        ref = 0
    verdicts = [compare("val_logloss", s, scores[ref], significance) if i != ref else "reference"
                for i, s in enumerate(scores)]
    better = [i for i, v in enumerate(verdicts) if v == "better"]
    best = min(better, key=lambda i: (float(scores[i]["val_logloss"]), i)) if better else ref
    records = [{"label": label, "ranks": dict(allocation.ranks), "dense": list(allocation.notes["dense"]),
                "params": allocation.notes["params"], "val_auc": float(s["val_auc"]),
                "val_logloss": float(s["val_logloss"]), "verdict": verdict}
               for (label, allocation), s, verdict in zip(candidates, scores, verdicts)]
    winner = candidates[best][1]
    winner.notes.update(selected=labels[best], reference=labels[ref], candidates=records)
    return winner, records


def _set_dense_apart(allocation: Allocation, prices: BudgetPrices) -> None:
    """Move the targets whose choice is their dense module out of ``ranks`` into ``notes["dense"]``
    (they are not swapped; their kept variance stays, 1.0)."""
    dense = [p.name for p in prices.auto if p.name in allocation.ranks and prices.is_dense(p, allocation.ranks[p.name])]
    for name in dense:
        del allocation.ranks[name]
    allocation.notes["dense"] = dense


def _rank_targets(budget: Budget, prices: BudgetPrices,
                  statistics: Mapping[str, compress.OutputStatistics]) -> list[RankTarget]:
    """The auto targets priced in parameters (``added - change``: a dense choice costs what the
    module has), with their spectra and their choices up to the break-even rank."""
    targets = []
    for p in prices.auto:
        values = compress.explained_variance(statistics[p.name].cov).eigenvalues.tolist()
        choices = prices.options(p, budget.multiple)
        targets.append(RankTarget(p.name, values, p.cost, p.max_rank, 1 if p.is_table else budget.multiple,
                                  costs={k: prices.added(p, k) - p.change for k in choices}, choices=choices))
    return targets


def check_latency(budget: Budget, smallest_ms: float) -> None:
    """An error naming the smallest feasible latency when the smallest structure already takes longer."""
    if budget.latency_ms is not None and smallest_ms > budget.latency_ms:
        raise InfeasibleBudgetError(
            f"the budget ({budget.describe()}) cannot be met on this machine: rank 1 for every field and rank "
            f"{budget.multiple} (or the full width) for every MLP layer, with the lookups and the rest of the "
            f"forward, already takes {smallest_ms:.4g} ms (measured, inference form, batch {budget.batch:,}); "
            f"the smallest feasible budget is latency_ms={smallest_ms:.4g}", smallest=smallest_ms)


def latency_times(model: nn.Module, planned: Sequence[PlannedStage], prices: BudgetPrices, budget: Budget,
                  timer: ProductTimer) -> dict[str, dict[int, float]]:
    """Measured microseconds of each auto target's products at each of its rank choices
    (:meth:`BudgetPrices.options`; the dense choice, its full width, timed as the dense module)."""
    fold_width = {name: p.fold_width for p in planned if p.fold_width is not None for name in p.names}
    folded = [p for p in prices.auto if p.name in fold_width]
    per_code = None
    if folded:
        per_code = fold_us_per_code(timer, len(folded), sum(p.max_rank for p in folded), fold_width[folded[0].name])
    times = {}
    for p in prices.auto:
        choices = prices.options(p, budget.multiple)
        factored = [k for k in choices if not prices.is_dense(p, k)]
        times[p.name] = {}
        if factored:
            times[p.name] = rank_times(model, p.name, factored, timer, per_code if p.name in fold_width else None)
        if len(factored) < len(choices):
            times[p.name][p.max_rank] = dense_us(model, p.name, timer)
    return times


def _timed_target(target: RankTarget, prices: BudgetPrices, times: Mapping[int, float]) -> RankTarget:
    """``target`` priced in microseconds above its smallest choice; where it may stay dense, only the
    ranks measured faster than the dense module remain (a slower factored layer is never chosen)."""
    price = next(p for p in prices.auto if p.name == target.name)
    choices = rank_choices(target)
    if prices.is_dense(price, choices[-1]):
        dense = times[choices[-1]]
        choices = [k for k in choices[:-1] if times[k] < dense] + [choices[-1]]
    smallest = choices[0]
    base = times[smallest]
    # the time above the smallest rank; never free (a larger rank measured as fast is noise
    # on a loaded machine): so no room means the smallest ranks
    costs = {k: max(times[k] - base, _FLOOR_US * (k - smallest)) for k in choices}
    return dataclasses.replace(target, costs=costs, choices=choices)


def _room_after_overrun(room_us: float, cost_us: float, measured_ms: float, smallest_ms: float,
                        budget_ms: float) -> float:
    """The room (µs above the smallest structure) for the next try after one overran the budget.

    The per-target timings are taken in isolation, and a whole forward costs more than their sum
    by a factor rather than a constant (caches shared by more and larger products: on DeepFM at
    batch 10,000, AMD EPYC, 1 thread, 98 ms predicted against 149 ms measured). So the time the
    try added above the smallest structure, measured over predicted, scales the next try's
    prices: its room is the budget's room divided by that factor, and below the try's own cost
    so that every retry is a smaller structure. A try predicted at no cost (the smallest
    structure, re-measured slower) falls back to the old rule, that much less room.
    """
    added_ms = measured_ms - smallest_ms
    if cost_us <= 0 or added_ms <= 0:
        return max(room_us - 1000.0 * (measured_ms - budget_ms), 0.0)
    factor = 1000.0 * added_ms / cost_us
    scaled = 1000.0 * (budget_ms - smallest_ms) / factor
    return max(min(scaled, cost_us * (1.0 - 1e-9)), 0.0)


def allocate_for_latency(budget: Budget, prices: BudgetPrices, statistics: Mapping[str, compress.OutputStatistics],
                         times: Mapping[str, Mapping[int, float]], smallest_ms: float,
                         measure: Callable[[Mapping[str, int]], float]) -> Allocation:
    """The auto targets' ranks for a latency budget: the most variance within the measured time.

    ``times``: :func:`latency_times`; ``smallest_ms``: the smallest structure's measured latency;
    ``measure(ranks)``: the measured latency of the structure at ``ranks`` (the targets not in it
    dense). Each allocation is measured; one that overruns the budget is redone with less room
    (:func:`_room_after_overrun`; at most :data:`LATENCY_RETRIES` tries, then the smallest structure).
    """
    check_latency(budget, smallest_ms)
    targets = [_timed_target(t, prices, times[t.name]) for t in _rank_targets(budget, prices, statistics)]
    room_us = 1000.0 * (budget.latency_ms - smallest_ms)
    tries = []
    for attempt in range(LATENCY_RETRIES + 1):
        if attempt == LATENCY_RETRIES:
            room_us = 0.0  # every try overran: the smallest structure, which the check measured within
        allocation = allocate_ranks(targets, room_us, budget.allocator)
        _set_dense_apart(allocation, prices)
        measured = measure(allocation.ranks)
        tries.append(round(measured, 4))
        if measured <= budget.latency_ms:
            break
        room_us = _room_after_overrun(room_us, allocation.cost, measured, smallest_ms, budget.latency_ms)
    allocation.notes.update(budget=budget.describe(), params=prices.params_at(allocation.ranks),
                            params_as_it_comes=prices.params_as_it_comes,
                            latency_budget_ms=float(budget.latency_ms), batch=int(budget.batch),
                            smallest_latency_ms=round(smallest_ms, 4),
                            predicted_latency_ms=round(smallest_ms + allocation.cost / 1000.0, 4),
                            planned_latency_ms=tries)
    return allocation
