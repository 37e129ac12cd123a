"""A size budget's allocation chosen on the validation split among weighted knapsacks and the uniform pair."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from lightning_afm import AFMCompressionCallback, EmbeddingStage, MLPStage
from lightning_afm.callbacks.budgeting import (MLP_WEIGHTS, BudgetPrices, allocate_for_budget, candidate_allocations,
                                               select_allocation)
from lightning_afm.callbacks.evaluation import evaluate
from lightning_afm.callbacks.latency import candidate_model
from lightning_afm.compress import parameter_count
from lightning_afm.compress.budget import Allocation, Budget, RankTarget, allocate_ranks, rank_choices
from lightning_afm.compress.pricing import Price
from lightning_afm.models import DeepFM


def _brute_force(targets, capacity):
    """The best weighted kept share within ``capacity``, by trying every combination."""
    best = -1.0
    for ranks in itertools.product(*(rank_choices(t) for t in targets)):
        if sum(t.cost_at(k) for t, k in zip(targets, ranks)) <= capacity:
            best = max(best, sum(t.weight * t.kept(k) for t, k in zip(targets, ranks)))
    return best


def test_a_target_weight_moves_rank_to_it_and_both_allocators_follow_the_weighted_objective():
    # a layer whose spectrum is flat (each component 1/8 of it) and a cheaper table whose first component holds half
    layer = RankTarget("layer", [1.0] * 8, cost=40, max_rank=8, step=2)
    table = RankTarget("table", [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.125], cost=10, max_rank=8)
    equal = allocate_ranks([layer, table], capacity=250)
    assert equal.ranks == {"layer": 4, "table": 8}  # equal weights: the table's cheap shares first
    heavy = RankTarget("layer", [1.0] * 8, cost=40, max_rank=8, step=2, weight=8.0)
    weighted = allocate_ranks([heavy, table], capacity=250)
    assert weighted.ranks == {"layer": 6, "table": 1}
    assert weighted.kept["layer"] == 0.75  # kept shares stay unweighted
    for targets in ([layer, table], [heavy, table]):
        exact = allocate_ranks(targets, capacity=250, allocator="exact")
        assert math.isclose(sum(t.weight * exact.kept[t.name] for t in targets), _brute_force(targets, 250))
    with pytest.raises(ValueError, match="weight must be a positive number"):
        RankTarget("x", [1.0], cost=1, max_rank=1, weight=0.0)


def test_budget_select_settings_are_checked():
    assert Budget(ratio=2.0).select == "val" and Budget.from_value({"ratio": 2, "select": "variance"}).select == "variance"
    with pytest.raises(ValueError, match="select must be one of"):
        Budget(ratio=2.0, select="auc")
    with pytest.raises(ValueError, match="select_rows"):
        Budget(ratio=2.0, select_rows=0)


def _allocation(rank):
    return Allocation({"a": rank}, {"a": 1.0}, rank, "greedy", {"dense": [], "params": 10 * rank})


def _scores(labels, logits):
    """Validation scores of per-row ``logits`` (what the callback's scoring returns)."""
    labels, logits = torch.as_tensor(labels, dtype=torch.float32), torch.as_tensor(logits, dtype=torch.float32)
    p = torch.sigmoid(logits.double())
    logloss = float(-(labels * p.log() + (1 - labels) * (1 - p).log()).mean())
    order = torch.argsort(logits)
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(logits) + 1, dtype=torch.float64)
    positives = labels.sum()
    auc = float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * (len(labels) - positives)))
    return {"val_auc": auc, "val_logloss": logloss, "logits": logits, "labels": labels}


def test_the_reference_is_kept_unless_a_candidate_is_better_beyond_the_noise():
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(4000, generator=gen) < 0.3).float()
    signal = 2.0 * (labels - 0.3)
    noise = torch.randn(4000, generator=gen)
    rows = {1: signal + 2.0 * noise,  # the reference, "uniform"
            2: signal + 2.0 * noise + 0.001 * torch.randn(4000, generator=gen),  # the same within the noise
            3: 3.0 * signal + 0.5 * noise,  # clearly better on both metrics
            4: float("nan") * noise}  # broken
    candidates = [("mlp_weight=1", _allocation(2)), ("uniform", _allocation(1)), ("broken", _allocation(4))]
    score = lambda a: _scores(labels, rows[a.ranks["a"]])  # noqa: E731
    winner, records = select_allocation(candidates, score)
    assert winner.notes["selected"] == "uniform" and winner.notes["reference"] == "uniform"
    assert [r["verdict"] for r in records] == ["tie", "reference", "worse"]
    winner, records = select_allocation([*candidates, ("mlp_weight=8", _allocation(3))], score)
    assert winner.ranks == {"a": 3} and records[-1]["verdict"] == "better" and records[-1]["params"] == 30
    assert winner.notes["candidates"] == records
    assert records[-1]["val_logloss"] < records[1]["val_logloss"] and records[-1]["val_auc"] > records[1]["val_auc"]
    # no uniform candidate: the first (the equal-weight rule) is the reference
    winner, _ = select_allocation([candidates[0], candidates[2]], score)
    assert winner.notes["selected"] == winner.notes["reference"] == "mlp_weight=1"
    with pytest.raises(ValueError, match="at least one candidate"):
        select_allocation([], score)


def _prices_and_statistics():
    """Two MLP layers 32 -> 32 (cost 65 per rank) and three folded tables of width 8 (an MLP width 32)."""
    layers = [Price(f"mlp.{i}", cost=65, change=-32 * 32 - 32, max_rank=32, is_table=False) for i in (1, 2)]
    tables = [Price(f"emb.{j}", cost=rows + 8 + 32, change=-rows * 8 - 8 * 32, max_rank=8, is_table=True)
              for j, rows in enumerate((50, 200, 400))]
    prices = BudgetPrices(layers + tables, 0, 20_000, 20_000, 4, frozenset(p.name for p in tables))
    decay = {p.name: torch.linspace(1.0, 0.05, p.max_rank, dtype=torch.float64) ** (1 if p.is_table else 4)
             for p in prices.auto}
    stats = {name: SimpleNamespace(cov=torch.diag(values)) for name, values in decay.items()}
    return prices, stats


def test_candidates_are_distinct_within_the_budget_and_start_with_the_equal_weight_rule():
    prices, stats = _prices_and_statistics()
    budget = Budget(params=16_000, multiple=4)
    candidates = candidate_allocations(budget, prices, stats)
    labels = [label for label, _ in candidates]
    assert labels[0] == "mlp_weight=1" and set(labels) <= {f"mlp_weight={w:g}" for w in MLP_WEIGHTS} | {"uniform"}
    assert candidates[0][1].ranks == allocate_for_budget(budget, prices, stats).ranks
    assert "uniform" in labels
    uniform = dict(candidates)["uniform"].ranks
    assert len({uniform[f"mlp.{i}"] for i in (1, 2)}) == 1 and len({uniform[f"emb.{j}"] for j in range(3)}) == 1
    keys = [(tuple(sorted(a.ranks.items())), tuple(a.notes["dense"])) for _, a in candidates]
    assert len(set(keys)) == len(keys) > 1
    for _, allocation in candidates:
        assert allocation.notes["params"] == prices.params_at(allocation.ranks) <= 16_000
    # heavier MLP weights never give the MLP layers less rank
    mlp_rank = [sum(a.ranks.get(f"mlp.{i}", 32) for i in (1, 2)) for label, a in candidates if label != "uniform"]
    assert mlp_rank == sorted(mlp_rank)
    with pytest.raises(ValueError, match="size budget"):
        candidate_allocations(Budget(kept_variance=0.9), prices, stats)


def _model(dm, hidden=(32, 32, 32)):
    return DeepFM(schema=dm.schema.to_dict(), embedding_dim=8, mlp_hidden=list(hidden), lr=3e-3)


def _fit(dm, model, budget, epochs=3):
    callback = AFMCompressionCallback([MLPStage(rank="auto"), EmbeddingStage(rank="auto")], baseline_epochs=1,
                                      progress=False, budget=budget)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    return callback, trainer


def test_the_callback_scores_every_candidate_and_keeps_the_one_the_rule_selects(tiny_synthetic):
    """Every candidate is scored as its stages would build it (checked by rebuilding the winner's
    scores independently); the winner is the reference unless a candidate was better beyond the noise."""
    pl.seed_everything(0)
    dm = tiny_synthetic(num_rows=6000)
    model = _model(dm)
    callback, trainer = _fit(dm, model, Budget(ratio=2.5, multiple=4))
    allocation = callback.allocation
    records = {r["label"]: r for r in allocation["candidates"]}
    assert allocation["selection"] == "val" and allocation["selection_rows"] == 100_000
    assert allocation["selection_s"] >= 0 and len(records) >= 2 and "uniform" in records
    assert allocation["reference"] == "uniform" and records["uniform"]["verdict"] == "reference"
    winner = records[allocation["selected"]]
    better = [r for r in records.values() if r["verdict"] == "better"]
    assert winner == (min(better, key=lambda r: r["val_logloss"]) if better else records["uniform"])
    assert winner["ranks"] == allocation["ranks"]
    assert allocation["params"] == parameter_count(model) and callback.summary()["budget"] == allocation
    assert model.mlp[1].linear.rank == allocation["ranks"]["mlp.1.linear"]


def test_a_candidate_model_is_scored_as_the_stages_build_it(tiny_synthetic):
    """The AFM-initialised copy equals the model the stages leave when their statistics are the same
    (no finetune in between: the embedding stage starts at once, 0 epochs for the MLP stage)."""
    from lightning_afm import compress

    pl.seed_everything(0)
    dm = tiny_synthetic()
    model = _model(dm)
    pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
               accelerator="cpu", enable_checkpointing=False).fit(model, datamodule=dm)
    callback = AFMCompressionCallback([MLPStage(rank="auto"), EmbeddingStage(rank="auto")], baseline_epochs=0,
                                      progress=False, budget=Budget(ratio=2.0, multiple=4))
    planned = callback.planned_stages(model)
    names = [n for p in planned for n in p.names]
    stats = compress.collect_statistics(model, names, dm.statistics_dataloader(),
                                        forward=lambda b: model(b["categorical"], b.get("numeric")), progress=False)
    ranks = {"mlp.1.linear": 8, "mlp.2.linear": 4, **{n: 2 for n in names if n.startswith("embeddings")}}
    copy = candidate_model(model, planned, stats, ranks)
    assert isinstance(model.mlp[1].linear, torch.nn.Linear)  # the model itself is untouched
    for p in planned:  # the stages' own calls (_start_stage), with their options
        compress.compress_targets(model, list(p.names), {n: stats[n] for n in p.names},
                                  rank={n: ranks[n] for n in p.names}, method=p.stage.method,
                                  **p.stage.build_options())
    compress.fold_into_first_linear(model)
    batch = next(iter(dm.val_dataloader()))
    model.eval(), copy.eval()
    with torch.no_grad():
        torch.testing.assert_close(copy(batch["categorical"], batch["numeric"]),
                                   model(batch["categorical"], batch["numeric"]))
    assert evaluate(copy, dm.val_dataloader())["logloss"] == evaluate(model, dm.val_dataloader())["logloss"]


def test_without_a_validation_split_the_equal_weight_rule_is_kept_with_a_warning(tiny_synthetic):
    pl.seed_everything(0)
    dm = tiny_synthetic(val_fraction=0.0)
    model = _model(dm)
    with pytest.warns(UserWarning, match="there is no validation split; using the equal-weight rule"):
        callback, _ = _fit(dm, model, Budget(ratio=2.5, multiple=4))
    allocation = callback.allocation
    assert allocation["selection"] == "variance" and "no validation split" in allocation["selection_note"]
    assert "candidates" not in allocation and allocation["params"] == parameter_count(model)
