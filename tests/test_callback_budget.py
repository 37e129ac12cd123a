"""Budgeted AFM in the callback: auto ranks per MLP layer and per field, the budget met, errors before any swap."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_afm import AFMCompressionCallback, EmbeddingStage, MLPStage
from lightning_afm.compress import LowRankEmbedding, LowRankLinear, parameter_count
from lightning_afm.compress.budget import Budget, InfeasibleBudgetError
from lightning_afm.models import DeepFM


def _model(dm):
    dm.prepare_data()
    dm.setup("fit")
    return DeepFM(schema=dm.schema.to_dict(), embedding_dim=8, mlp_hidden=[32, 32, 32], lr=3e-3)


def _trainer(callbacks, max_epochs=3):
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", enable_checkpointing=False)


def _auto(budget, **emb):
    return AFMCompressionCallback([MLPStage(rank="auto"), EmbeddingStage(rank="auto", **emb)],
                                  baseline_epochs=1, progress=False, budget=budget)


@pytest.mark.parametrize("budget", [Budget(ratio=3.0, multiple=4), Budget(kept_variance=0.9, multiple=4)])
def test_auto_ranks_meet_the_budget_and_are_recorded(tiny_synthetic, same_predictions_in_fresh_process, budget):
    pl.seed_everything(0)
    dm = tiny_synthetic()
    model = _model(dm)
    before = parameter_count(model)
    callback = _auto(budget)
    trainer = _trainer([callback])
    trainer.fit(model, datamodule=dm)
    allocation = callback.allocation
    after = parameter_count(model)
    assert allocation["params"] == after  # the priced structure is the built one
    if budget.sized:
        assert after <= before / 3.0
    ranks = allocation["ranks"]
    assert set(ranks) == {"mlp.1.linear", "mlp.2.linear"} | {f"embeddings.{n}" for n in model.embeddings.module_names}
    assert model.mlp[1].linear.rank == ranks["mlp.1.linear"] and ranks["mlp.1.linear"] % 4 == 0
    assert model.embeddings.code_dims == [ranks[f"embeddings.{n}"] for n in model.embeddings.module_names]
    assert all(k >= 1 for k in model.embeddings.code_dims) and model.mlp_reads_codes
    # history: the chosen rank and the variance kept of each layer / field; summary.json's budget block
    mlp, emb = callback.history
    assert mlp["rank"] == "auto" and mlp["ranks"] == {n: ranks[n] for n in ("mlp.1.linear", "mlp.2.linear")}
    assert mlp["budget"] == allocation and emb["budget"] is None
    assert set(emb["layers"]) == set(emb["ranks"]) and all(0 < v["kept_variance"] <= 1 for v in emb["layers"].values())
    assert callback.summary()["budget"]["ranks"] == ranks
    if not budget.sized:
        assert all(v >= 0.9 - 1e-9 for v in allocation["kept_variance"].values())

    # a checkpoint of the variable-rank model loads into a fresh model in a fresh process
    same_predictions_in_fresh_process(trainer, model, dm)


def test_an_infeasible_budget_says_the_smallest_feasible_one_before_any_swap(tiny_synthetic):
    dm = tiny_synthetic()
    model = _model(dm)
    callback = _auto(Budget(params=1000, multiple=4))
    with pytest.raises(InfeasibleBudgetError, match="the smallest feasible budget is params=") as err:
        _trainer([callback]).fit(model, datamodule=dm)
    assert err.value.smallest > 1000
    assert callback.stages_started == 0 and isinstance(model.mlp[1].linear, torch.nn.Linear)
    # that smallest budget is met
    callback = _auto(Budget(params=err.value.smallest, multiple=4))
    _trainer([callback]).fit(_model(tiny_synthetic()), datamodule=dm)
    assert callback.allocation["params"] <= err.value.smallest
    with pytest.raises(InfeasibleBudgetError, match="smallest feasible budget is ratio="):
        _trainer([_auto(Budget(ratio=1000.0))]).fit(_model(dm), datamodule=dm)


def test_misuse_of_auto_ranks_and_budgets():
    with pytest.raises(ValueError, match="every stage has a fixed rank"):
        AFMCompressionCallback([MLPStage(rank=4)], budget=Budget(ratio=2.0))
    with pytest.raises(ValueError, match="needs a budget"):
        AFMCompressionCallback([MLPStage(rank="auto")])
    with pytest.raises(ValueError, match="rank='auto' reads AFM's spectra"):
        MLPStage(rank="auto", method="svd")
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        MLPStage(rank="big")
    with pytest.raises(ValueError, match="grow_rank"):
        EmbeddingStage(rank="auto", grow_rank=True)
    assert AFMCompressionCallback([MLPStage(rank="auto")], budget={"ratio": 2}).budget == Budget(ratio=2)
