"""The budget allocation against a brute-force optimum over every rank combination of tiny spectra."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lightning_afm.compress.budget import (
    Budget,
    InfeasibleBudgetError,
    RankTarget,
    allocate_ranks,
    rank_choices,
)


def _targets(seed: int, count: int = 3) -> list[RankTarget]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        width = int(rng.integers(2, 6))
        values = np.sort(rng.exponential(1.0, width) ** 2)[::-1]
        out.append(RankTarget(f"t{i}", values.tolist(), cost=int(rng.integers(1, 9)), max_rank=width,
                              step=int(rng.integers(1, 3))))
    return out


def _brute_force(targets, capacity):
    """The best total kept share over every combination of allowed ranks (numpy sums, no shortcuts)."""
    best, best_ranks = -1.0, None
    for ranks in itertools.product(*[rank_choices(t) for t in targets]):
        cost = sum(t.cost * k for t, k in zip(targets, ranks))
        if cost > capacity:
            continue
        value = sum(float(np.sum(t.eigenvalues[:k]) / np.sum(t.eigenvalues)) for t, k in zip(targets, ranks))
        if value > best:
            best, best_ranks = value, ranks
    return best, best_ranks


@pytest.mark.parametrize("seed", range(12))
def test_exact_matches_brute_force_and_greedy_is_within_one_step(seed):
    targets = _targets(seed)
    least = sum(t.cost * rank_choices(t)[0] for t in targets)
    most = sum(t.cost * t.max_rank for t in targets)
    for capacity in np.linspace(least, most, 5).astype(int):
        best, _ = _brute_force(targets, capacity)
        exact = allocate_ranks(targets, int(capacity), "exact")
        assert exact.cost <= capacity
        assert sum(exact.kept.values()) == pytest.approx(best, abs=1e-9)
        greedy = allocate_ranks(targets, int(capacity), "greedy")
        assert greedy.cost <= capacity
        largest_step = max(t.kept(b) - t.kept(a) for t in targets
                           for a, b in zip(rank_choices(t), rank_choices(t)[1:]))
        assert sum(greedy.kept.values()) >= best - largest_step - 1e-9


def test_greedy_is_optimal_when_every_rank_costs_alike():
    targets = [RankTarget(f"f{i}", v, cost=10, max_rank=4)
               for i, v in enumerate([[8, 4, 2, 1], [5, 5, 0.1, 0.1], [1, 1, 1, 1]])]
    for capacity in range(30, 121, 10):
        best, _ = _brute_force(targets, capacity)
        assert sum(allocate_ranks(targets, capacity).kept.values()) == pytest.approx(best)


def test_rank_goes_where_variance_per_parameter_is_highest():
    cheap_flat = RankTarget("cheap", [1.0] * 8, cost=1, max_rank=8)
    dear_steep = RankTarget("dear", [100.0] + [0.001] * 7, cost=100, max_rank=8)
    out = allocate_ranks([cheap_flat, dear_steep], capacity=8 + 100)
    assert out.ranks == {"cheap": 8, "dear": 1}


def test_steps_and_largest_rank():
    t = RankTarget("l", [1.0] * 20, cost=1, max_rank=20, step=8)
    assert rank_choices(t) == [8, 16, 20]
    assert rank_choices(RankTarget("n", [1.0] * 4, cost=1, max_rank=4, step=8)) == [4]
    assert allocate_ranks([t], capacity=17).ranks == {"l": 16}


def test_kept_variance_takes_the_smallest_rank_keeping_the_share():
    t = RankTarget("x", [6.0, 3.0, 1.0], cost=5, max_rank=3)
    assert allocate_ranks([t], kept_variance=0.9).ranks == {"x": 2}
    assert allocate_ranks([t], kept_variance=0.91).ranks == {"x": 3}
    assert allocate_ranks([t], kept_variance=0.5).kept == {"x": pytest.approx(0.6)}


def test_infeasible_capacity_says_the_smallest_feasible_one():
    targets = [RankTarget("a", [1, 1], cost=3, max_rank=2), RankTarget("b", [1] * 8, cost=2, max_rank=8, step=4)]
    with pytest.raises(InfeasibleBudgetError, match="already takes 11") as err:
        allocate_ranks(targets, capacity=10)
    assert err.value.smallest == 11
    assert allocate_ranks(targets, capacity=11).ranks == {"a": 1, "b": 4}


def test_bad_budgets_say_what_to_give():
    with pytest.raises(ValueError, match="exactly one of"):
        Budget()
    with pytest.raises(ValueError, match="exactly one of"):
        Budget(params=10, ratio=2.0)
    with pytest.raises(ValueError, match="ratio is how many times fewer"):
        Budget(ratio=0.5)
    with pytest.raises(ValueError, match="kept_variance is a share"):
        Budget(kept_variance=1.5)
    with pytest.raises(ValueError, match="params must be a positive number"):
        Budget(params="big")
    with pytest.raises(ValueError, match="allocator must be one of"):
        Budget(ratio=2.0, allocator="magic")
    with pytest.raises(ValueError, match="unknown settings \\['latency'\\]"):
        Budget.from_value({"latency": 3})
    assert Budget.from_value({"ratio": 5}) == Budget(ratio=5)
    assert Budget(bytes=400).max_params(1000, 4) == 100 and Budget(ratio=4.0).max_params(1000, 4) == 250
    with pytest.raises(ValueError, match="distinct names"):
        allocate_ranks([RankTarget("a", [1], 1, 1)] * 2, capacity=5)


def _measured_like_targets(seed: int) -> list[RankTarget]:
    """Targets whose cost per rank choice is not proportional to the rank (as measured times are)."""
    rng = np.random.default_rng(100 + seed)
    out = []
    for i in range(3):
        width = int(rng.integers(2, 6))
        values = np.sort(rng.exponential(1.0, width) ** 2)[::-1]
        step = int(rng.integers(1, 3))
        probe = RankTarget(f"t{i}", values.tolist(), cost=1, max_rank=width, step=step)
        costs = {k: float(rng.uniform(0.0, 10.0)) for k in rank_choices(probe)}
        out.append(RankTarget(f"t{i}", values.tolist(), cost=1, max_rank=width, step=step, costs=costs))
    return out


def _brute_force_costs(targets, capacity):
    best = -1.0
    for ranks in itertools.product(*[rank_choices(t) for t in targets]):
        if sum(t.costs[k] for t, k in zip(targets, ranks)) <= capacity + 1e-12:
            best = max(best, sum(float(np.sum(t.eigenvalues[:k]) / np.sum(t.eigenvalues))
                                 for t, k in zip(targets, ranks)))
    return best


@pytest.mark.parametrize("seed", range(10))
def test_costs_per_rank_choice_exact_is_optimal_and_both_fit(seed):
    targets = _measured_like_targets(seed)
    least = sum(t.costs[rank_choices(t)[0]] for t in targets)
    for capacity in np.linspace(least, least + 20.0, 6):
        best = _brute_force_costs(targets, capacity)
        exact = allocate_ranks(targets, float(capacity), "exact")
        assert exact.cost <= capacity + 1e-9
        assert sum(exact.kept.values()) == pytest.approx(best, abs=1e-9)
        greedy = allocate_ranks(targets, float(capacity), "greedy")
        assert greedy.cost <= capacity + 1e-9
        assert greedy.cost == pytest.approx(sum(t.costs[greedy.ranks[t.name]] for t in targets))


def test_greedy_steps_over_a_slow_rank_to_a_faster_larger_one():
    # rank 2 is slower than rank 3 (a width the products dislike): greedy goes 1 -> 3 for free
    t = RankTarget("l", [4.0, 2.0, 1.0, 1.0], cost=1, max_rank=4, costs={1: 0.0, 2: 5.0, 3: 1.0, 4: 9.0})
    assert allocate_ranks([t], capacity=1.0).ranks == {"l": 3}
    assert allocate_ranks([t], capacity=0.5).ranks == {"l": 1}
    free = RankTarget("f", [1.0, 1.0, 1.0], cost=1, max_rank=3, costs={1: 2.0, 2: 2.0, 3: 2.0})
    assert allocate_ranks([free], capacity=2.0).ranks == {"f": 3}
    with pytest.raises(ValueError, match="costs has no entry for ranks \\[3\\]"):
        RankTarget("x", [1.0] * 3, cost=1, max_rank=3, costs={1: 0.0, 2: 1.0})


def test_latency_budget_settings():
    budget = Budget(latency_ms=12.5, batch=2000)
    assert budget.timed and not budget.sized and budget.describe() == "12.5 ms per batch of 2,000"
    assert Budget.from_value({"latency_ms": 3, "batch": 500}) == Budget(latency_ms=3, batch=500)
    assert Budget(latency_ms=1).batch == 10_000
    with pytest.raises(ValueError, match="latency_ms must be a positive number"):
        Budget(latency_ms=-1)
    with pytest.raises(ValueError, match="batch .* must be a whole number"):
        Budget(latency_ms=1, batch=2.5)
    with pytest.raises(ValueError, match="exactly one of"):
        Budget(latency_ms=1, ratio=2.0)
    with pytest.raises(ValueError, match="has no parameter count"):
        budget.max_params(100, 4)
