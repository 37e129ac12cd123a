"""A latency budget: ranks priced in measured time, the infeasible budget refused before any swap,
the compressed model's measured latency recorded and within the budget."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_afm import AFMCompressionCallback, EmbeddingStage, MLPStage
from lightning_afm.compress.budget import Budget, InfeasibleBudgetError
from lightning_afm.compress.pricing import MAX_TIMED_RANKS, rank_times
from lightning_afm.compress.timing import ProductTimer, median_ms
from lightning_afm.models import DeepFM


def _model(dm):
    return DeepFM(schema=dm.schema.to_dict(), embedding_dim=8, mlp_hidden=[32, 32, 32], lr=3e-3)


def test_a_generous_latency_budget_is_met_and_recorded(tiny_synthetic, fit_budgeted):
    pl.seed_everything(0)
    dm = tiny_synthetic()
    model = _model(dm)
    # generous: a tiny model at batch 1,000 takes about a millisecond even on a loaded machine
    callback = fit_budgeted(dm, model, Budget(latency_ms=500.0, batch=1000, multiple=4))
    budget = callback.allocation
    assert budget["latency_ms"] is not None and 0 < budget["latency_ms"] <= 500.0
    assert 0 < budget["smallest_latency_ms"] <= 500.0 and budget["batch"] == 1000
    assert all(0 < ms <= 500.0 for ms in budget["planned_latency_ms"])
    # so much room: the MLP layers stay dense (every factored rank up to the break-even keeps less, and a
    # rank past it would be larger than the dense layer); the folded tables at their break-even ranks
    assert budget["dense"] == ["mlp.1.linear", "mlp.2.linear"] and "mlp.1.linear" not in budget["ranks"]
    assert type(model.mlp[1].linear) is nn.Linear and type(model.mlp[2].linear) is nn.Linear
    assert model.embeddings.code_dims == [6, 6, 7, 7]  # vocabularies 6, 21, 61, 195 at width 8, read by 32 columns
    mlp, emb = callback.history
    assert emb["latency_ms"] == budget["latency_ms"] and mlp["latency_ms"] is None
    assert callback.summary()["budget"]["latency_ms"] == budget["latency_ms"]


def test_a_latency_under_the_lookups_says_the_smallest_feasible_one_before_any_swap(tiny_synthetic):
    dm = tiny_synthetic()
    model = _model(dm)
    callback = AFMCompressionCallback([MLPStage(rank="auto"), EmbeddingStage(rank="auto")], baseline_epochs=1,
                                      progress=False, budget=Budget(latency_ms=1e-6, batch=1000, multiple=4))
    trainer = pl.Trainer(max_epochs=3, callbacks=[callback], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", enable_checkpointing=False)
    with pytest.raises(InfeasibleBudgetError, match=r"the smallest feasible budget is latency_ms=[0-9.]+") as err:
        trainer.fit(model, datamodule=dm)
    assert err.value.smallest > 1e-6
    assert callback.stages_started == 0 and isinstance(model.mlp[1].linear, nn.Linear)
    assert trainer.current_epoch == 0  # refused at fit start, before the baseline trained


def test_a_latency_budget_needs_an_auto_stage():
    with pytest.raises(ValueError, match="every stage has a fixed rank"):
        AFMCompressionCallback([MLPStage(rank=4), EmbeddingStage(rank=2)], budget=Budget(latency_ms=5.0))


class _CountingTimer(ProductTimer):
    """A timer whose 'measurements' follow a formula (a product's multiply-adds), counted."""

    def __init__(self) -> None:
        super().__init__(batch=10)
        self.calls = 0

    def _time(self, key, make):
        self.calls += 1
        _, *dims = key
        return float(sum(a * b for a, b in zip(dims, dims[1:])) if key[0] != "gather" else dims[1])


def test_rank_times_interpolates_between_the_timed_ranks():
    model = nn.Sequential(nn.Linear(400, 400), nn.Embedding(50, 8))
    timer = _CountingTimer()
    choices = list(range(8, 401, 8))
    times = rank_times(model, "0", choices, timer)
    assert timer.calls <= MAX_TIMED_RANKS  # not every choice timed
    # the formula is linear in k (400 k + 400 k), so interpolation and extrapolation are exact
    assert all(times[k] == pytest.approx(800.0 * k) for k in choices)
    table = rank_times(model, "1", list(range(1, 9)), timer, us_per_code=3.0)
    assert all(table[k] == pytest.approx(k + 3.0 * k) for k in range(1, 9))
    own_projection = rank_times(model, "1", [1, 2], timer)
    assert own_projection == {1: pytest.approx(1 + 8), 2: pytest.approx(2 + 16)}


def test_product_timer_times_each_shape_once():
    timer = ProductTimer(batch=64)
    first = timer.linear_pair_us(16, 4, 16)
    assert first > 0 and timer.linear_pair_us(16, 4, 16) == first and timer.shapes_timed == 1
    assert timer.gather_us(100, 4) > 0 and timer.product_us(4, 16) > 0 and timer.shapes_timed == 3
    assert median_ms(lambda: torch.ones(4).sum()) >= 0
    with pytest.raises(ValueError, match="batch must be a positive number"):
        ProductTimer(batch=0)


def test_measured_times_are_made_non_decreasing_in_the_rank():
    class Spiky(_CountingTimer):
        def _time(self, key, make):
            return 50.0 if key[2] == 1 else float(key[2])  # the smallest rank's timing hit a load spike

    model = nn.Sequential(nn.Embedding(50, 8))
    times = rank_times(model, "0", list(range(1, 9)), Spiky(), us_per_code=0.0)
    values = [times[k] for k in range(1, 9)]
    assert values == sorted(values) and values[0] == pytest.approx((50.0 + sum(range(2, 9))) / 8)  # pooled


def _latency_problem():
    from types import SimpleNamespace

    from lightning_afm.callbacks.budgeting import BudgetPrices
    from lightning_afm.compress.pricing import Price

    # two folded tables (no dense choice) whose every rank saves parameters
    prices = BudgetPrices(auto=[Price("a", 10, -100, 4, True), Price("b", 10, -100, 4, True)], fixed=0,
                          params_now=1000, params_as_it_comes=1000, bytes_per_param=4, folded=frozenset("ab"))
    stats = {n: SimpleNamespace(cov=torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)))
             for n in ("a", "b")}
    times = {n: {k: 1000.0 * k for k in range(1, 5)} for n in ("a", "b")}  # 1 ms per unit of rank
    return prices, stats, times


def test_allocate_for_latency_keeps_a_measured_fit_and_falls_back_to_the_smallest():
    from lightning_afm.callbacks.budgeting import LATENCY_RETRIES, allocate_for_latency

    prices, stats, times = _latency_problem()
    budget = Budget(latency_ms=14.0, batch=10)  # smallest 10 ms: 4 ms of room, 1 ms per unit of rank

    def as_predicted(ranks):
        return 8.0 + sum(ranks.values())

    out = allocate_for_latency(budget, prices, stats, times, smallest_ms=10.0, measure=as_predicted)
    assert sum(out.ranks.values()) == 2 + 4 and out.notes["planned_latency_ms"] == [14.0]
    assert out.notes["predicted_latency_ms"] == pytest.approx(14.0)
    # the structures measure 2 ms over what the products say for every unit of rank above the
    # smallest (the try at 4 ms predicted measures 8 ms above it): each retry divides the room by
    # the measured factor and is a smaller structure, down to the smallest
    seen = []

    def slow(ranks):
        seen.append(dict(ranks))
        return 12.0 + sum(ranks.values())

    out = allocate_for_latency(budget, prices, stats, times, smallest_ms=10.0, measure=slow)
    assert [sum(r.values()) for r in seen] == [6, 4, 3, 2] and out.ranks == {"a": 1, "b": 1}
    assert out.notes["planned_latency_ms"] == [18.0, 16.0, 15.0, 14.0]
    # the whole forward costs three times the products' sum (DeepFM measured 1.5x to 2.2x): the
    # retry's room is divided by 3 and that structure fits, where subtracting the 10 ms overrun
    # from the 8 ms of room would have left none (the smallest structure, 4 ms of budget unused)
    seen.clear()

    def thrice(ranks):
        seen.append(dict(ranks))
        return 10.0 + 3.0 * (sum(ranks.values()) - 2)

    out = allocate_for_latency(Budget(latency_ms=18.0, batch=10), prices, stats, times, smallest_ms=10.0,
                               measure=thrice)
    assert [sum(r.values()) for r in seen] == [8, 4] and out.notes["planned_latency_ms"] == [28.0, 16.0]
    # always over: the smallest structure after the retries
    out = allocate_for_latency(budget, prices, stats, times, smallest_ms=10.0, measure=lambda ranks: 99.0)
    assert out.ranks == {"a": 1, "b": 1} and len(out.notes["planned_latency_ms"]) == LATENCY_RETRIES + 1
    with pytest.raises(InfeasibleBudgetError, match="smallest feasible budget is latency_ms=15"):
        allocate_for_latency(budget, prices, stats, times, smallest_ms=15.0, measure=slow)
