"""The callback's budget: price the stages to come, check the budget can be met, choose the auto ranks.

The ranks of every ``rank="auto"`` target (MLP Linears and field tables together) are chosen
once, at the start of the first auto stage, from one statistics pass over all of them
(:mod:`lightning_afm.compress.budget`); the stages then swap at those ranks (each stage's own
statistics pass, after the earlier finetunes, computes its factors). Fixed-rank stages still to
come count at their rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from lightning_afm import compress
from lightning_afm.compress.budget import Allocation, Budget, InfeasibleBudgetError, RankTarget, allocate_ranks
from lightning_afm.compress.pricing import Price, price_targets
from lightning_afm.callbacks.stages import CompressionStage

__all__ = ["PlannedStage", "BudgetPrices", "price_stages", "check_budget", "allocate_for_budget"]


@dataclass(frozen=True)
class PlannedStage:
    """A stage still to come: its targets and, for a table stage that will fold, the first MLP Linear's width."""

    stage: CompressionStage
    names: Sequence[str]
    fold_width: int | None = None


@dataclass(frozen=True)
class BudgetPrices:
    """The auto targets' prices and the fixed part: the parameters after compression are
    ``params_now + fixed + sum_i (cost_i k_i + change_i)`` over the auto targets."""

    auto: list[Price]
    fixed: int
    params_now: int
    params_as_it_comes: int
    bytes_per_param: int

    def smallest_params(self, step: int) -> int:
        return self.params_now + self.fixed + sum(p.added(_smallest_rank(p, step)) for p in self.auto)

    def targets_capacity(self, budget: Budget) -> int:
        """Parameters left for ``sum_i cost_i k_i`` under ``budget``."""
        allowed = budget.max_params(self.params_as_it_comes, self.bytes_per_param)
        return allowed - self.params_now - self.fixed - sum(p.change for p in self.auto)


def _smallest_rank(price: Price, step: int) -> int:
    return 1 if price.is_table else min(step, price.max_rank)


def price_stages(model: nn.Module, planned: Sequence[PlannedStage], params_as_it_comes: int) -> BudgetPrices:
    """What the stages to come cost: per unit of rank for the auto targets, in total for the fixed ones."""
    auto: list[Price] = []
    fixed = 0
    for p in planned:
        prices = price_targets(model, p.names, p.stage.method, p.fold_width)
        if p.stage.auto_rank:
            auto.extend(prices)
        else:
            fixed += sum(price.added(p.stage.rank) for price in prices)
    first = next(iter(model.parameters()))
    return BudgetPrices(auto, fixed, compress.parameter_count(model), int(params_as_it_comes), first.element_size())


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
            f"field and rank {budget.multiple} (or the full width) for every MLP layer already leaves {least:,}; "
            f"the smallest feasible budget is {smallest}", smallest=least)


def allocate_for_budget(budget: Budget, prices: BudgetPrices,
                        statistics: Mapping[str, compress.OutputStatistics]) -> Allocation:
    """The auto targets' ranks for ``budget`` from their statistics (all of them, one pass)."""
    check_budget(budget, prices)
    targets = []
    for p in prices.auto:
        values = compress.explained_variance(statistics[p.name].cov).eigenvalues.tolist()
        targets.append(RankTarget(p.name, values, p.cost, p.max_rank, 1 if p.is_table else budget.multiple))
    if budget.sized:
        allocation = allocate_ranks(targets, prices.targets_capacity(budget), budget.allocator)
    else:
        allocation = allocate_ranks(targets, kept_variance=budget.kept_variance)
    by_name = {p.name: p for p in prices.auto}
    params = prices.params_now + prices.fixed + sum(by_name[n].added(k) for n, k in allocation.ranks.items())
    allocation.notes.update(budget=budget.describe(), params=int(params),
                            params_as_it_comes=prices.params_as_it_comes)
    return allocation
