"""Auto ranks stop at the break-even rank: no factored layer larger (or, under a latency budget, slower)
than the dense one; a target with no saving rank stays dense and is recorded so."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_afm import MLPStage
from lightning_afm.callbacks.budgeting import BudgetPrices, allocate_for_latency, price_stages, smallest_ranks
from lightning_afm.compress import LowRankLinear, collect_statistics, compress_targets, parameter_count
from lightning_afm.compress.budget import Budget
from lightning_afm.compress.pricing import Price, price_targets
from lightning_afm.models import DeepFM


def _model(dm, mlp=(32, 32, 32)):
    return DeepFM(schema=dm.schema.to_dict(), embedding_dim=8, mlp_hidden=list(mlp), lr=3e-3)


def test_saving_ranks_are_those_where_the_built_replacement_is_smaller(tiny_synthetic):
    """Reference: the parameter count of the model with the replacement really built at each rank."""
    dm = tiny_synthetic()
    model = _model(dm, mlp=(24, 40, 16))  # mlp.1: 24 -> 40, mlp.2: 40 -> 16
    names = ["mlp.1.linear", "mlp.2.linear"] + [f"embeddings.{n}" for n in model.embeddings.module_names]
    stats = collect_statistics(model, names, dm.statistics_dataloader(),
                               lambda b: model(b["categorical"], b["numeric"]), progress=False)
    dense = parameter_count(model)
    for price in price_targets(model, names, "afm"):
        smaller = []
        for k in range(1, price.max_rank + 1):
            built = copy.deepcopy(model)
            compress_targets(built, [price.name], {price.name: stats[price.name]}, rank=k, method="afm")
            if parameter_count(built) < dense:
                smaller.append(k)
        assert price.saving_ranks(1) == smaller, price.name
        assert price.saving_ranks(4) == [k for k in smaller if k % 4 == 0 or price.is_table], price.name
    # the closed form for a Linear n -> m with biases: k (n + m + 1) + m < n m + m
    for name, n, m in (("mlp.1.linear", 24, 40), ("mlp.2.linear", 40, 16)):
        linear = price_targets(model, [name], "afm")[0]
        assert linear.saving_ranks(1)[-1] == max(k for k in range(1, 41) if k * (n + m + 1) < n * m) < n * m / (n + m)


def test_options_end_at_the_break_even_then_dense_unless_folded():
    linear = Price("mlp.1.linear", cost=65, change=-1024, max_rank=32, is_table=False)  # 32 -> 32: saves up to 15
    table = Price("embeddings.C1", cost=46, change=-296, max_rank=8, is_table=True)  # saves up to 6
    prices = BudgetPrices([linear, table], fixed=0, params_now=5000, params_as_it_comes=5000, bytes_per_param=4,
                          folded=frozenset({"embeddings.C1"}))
    assert prices.options(linear, 4) == [4, 8, 12, 32]  # 32: the dense layer, not a rank-32 factorisation
    assert prices.options(table, 4) == [1, 2, 3, 4, 5, 6]  # folded: the fold needs its codes, no dense choice
    assert prices.added(linear, 32) == 0 and prices.added(linear, 12) == 12 * 65 - 1024
    assert prices.options(linear, 32) == [32]  # no multiple of 32 saves: dense only
    assert smallest_ranks(prices, 32) == {"embeddings.C1": 1} and prices.smallest_params(32) == 5000 - 250
    unfolded = BudgetPrices([table], 0, 100, 100, 4)
    assert unfolded.options(table, 1) == [1, 2, 3, 4, 5, 6, 8]
    assert BudgetPrices([Price("t", 10, 5, 4, True)], 0, 100, 100, 4, frozenset("t")).options(
        Price("t", 10, 5, 4, True), 1) == [1]  # folded, no rank saves: its smallest


def test_a_generous_budget_never_builds_a_factored_layer_larger_than_the_dense_one(tiny_synthetic, fit_budgeted):
    pl.seed_everything(0)
    dm = tiny_synthetic()
    model = _model(dm)
    before = parameter_count(model)
    callback = fit_budgeted(dm, model, Budget(ratio=1.0, multiple=4))
    allocation = callback.allocation
    assert allocation["params"] == parameter_count(model) <= before
    for name in ("mlp.1.linear", "mlp.2.linear"):
        layer = model.get_submodule(name)
        if isinstance(layer, LowRankLinear):
            assert sum(p.numel() for p in layer.parameters()) < 32 * 32 + 32
        else:  # left dense: recorded so, and in no rank list
            assert type(layer) is nn.Linear and name in allocation["dense"] and name not in allocation["ranks"]
    assert all(k <= 7 for k in model.embeddings.code_dims)  # every table below its break-even (6 or 7)


def test_kept_variance_at_the_cap_leaves_the_layers_dense_that_need_more(tiny_synthetic, fit_budgeted):
    """kept_variance=1.0 needs every component: a rank past the break-even, so the MLP layers stay dense
    (they keep it all, with fewer parameters than that rank); the folded tables stop at the break-even."""
    pl.seed_everything(0)
    dm = tiny_synthetic()
    model = _model(dm)
    callback = fit_budgeted(dm, model, Budget(kept_variance=1.0, multiple=4))
    allocation = callback.allocation
    assert allocation["dense"] == ["mlp.1.linear", "mlp.2.linear"]
    assert allocation["kept_variance"]["mlp.1.linear"] == 1.0
    assert type(model.mlp[1].linear) is nn.Linear and type(model.mlp[2].linear) is nn.Linear
    assert model.embeddings.code_dims == [6, 6, 7, 7] and allocation["params"] == parameter_count(model)
    mlp, emb = callback.history
    assert mlp["dense"] == ["mlp.1.linear", "mlp.2.linear"] and mlp["ranks"] == {} and emb["dense"] == []
    assert mlp["params"] == mlp["params_before"] and mlp["layers"]["mlp.1.linear"]["kept_variance"] == 1.0


def test_a_layer_with_no_saving_multiple_stays_dense_and_the_budget_counts_it(tiny_synthetic, fit_budgeted):
    pl.seed_everything(0)
    dm = tiny_synthetic()
    model = _model(dm)
    callback = fit_budgeted(dm, model, Budget(ratio=1.3, multiple=32))  # rank 32 of a 32 x 32 layer saves nothing
    assert callback.allocation["dense"] == ["mlp.1.linear", "mlp.2.linear"]
    assert type(model.mlp[1].linear) is nn.Linear
    assert callback.allocation["params"] == parameter_count(model)


def _timed_linear():
    linear = Price("l", cost=65, change=-1024, max_rank=32, is_table=False)  # options 8, then dense (32)
    prices = BudgetPrices([linear], 0, 5000, 5000, 4)
    stats = {"l": SimpleNamespace(cov=torch.diag(torch.linspace(2.0, 0.1, 32, dtype=torch.float64)))}
    return prices, stats


def test_under_a_latency_budget_only_ranks_faster_than_dense_remain():
    prices, stats = _timed_linear()
    budget = Budget(latency_ms=100.0, batch=10, multiple=4)  # options 4, 8, 12, dense
    times = {"l": {4: 1000.0, 8: 2000.0, 12: 4000.0, 32: 3000.0}}  # rank 12 measured slower than dense
    seen = []

    def measure(ranks):
        seen.append(dict(ranks))
        return 1.0

    # room for everything: dense (keeps all, and is faster than rank 12)
    out = allocate_for_latency(budget, prices, stats, times, smallest_ms=1.0, measure=measure)
    assert out.notes["dense"] == ["l"] and out.ranks == {} and seen[-1] == {}
    assert out.notes["params"] == 5000
    # 1.5 ms of room above rank 4: rank 8 (1 ms more) fits, dense (2 ms more) does not, 12 is never offered
    out = allocate_for_latency(Budget(latency_ms=2.5, batch=10, multiple=4), prices, stats, times,
                               smallest_ms=1.0, measure=measure)
    assert out.ranks == {"l": 8} and out.notes["dense"] == [] and out.notes["params"] == 5000 + 8 * 65 - 1024
    # every rank slower than dense: dense is the only choice, whatever the room
    slow = {"l": {4: 5000.0, 8: 6000.0, 12: 7000.0, 32: 3000.0}}
    out = allocate_for_latency(Budget(latency_ms=1.5, batch=10, multiple=4), prices, stats, slow,
                               smallest_ms=1.0, measure=measure)
    assert out.notes["dense"] == ["l"] and out.ranks == {}


def test_the_latency_path_times_the_dense_choice(tiny_synthetic):
    from lightning_afm.callbacks.budgeting import PlannedStage, latency_times
    from lightning_afm.compress.timing import ProductTimer

    model = _model(tiny_synthetic())
    stage = MLPStage(rank="auto")
    planned = [PlannedStage(stage, ["mlp.1.linear"])]
    prices = price_stages(model, planned, parameter_count(model))
    timer = ProductTimer(batch=64)
    times = latency_times(model, planned, prices, Budget(latency_ms=5.0, multiple=4), timer)
    assert sorted(times["mlp.1.linear"]) == [4, 8, 12, 32]
    assert times["mlp.1.linear"][32] == timer.product_us(32, 32)  # the dense product, timed once
