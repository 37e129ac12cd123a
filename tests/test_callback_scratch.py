"""Method "random": AFM's structure with fresh weights, to train the small model from scratch (Table 14)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_afm import AFMCompressionCallback, EmbeddingStage, MLPStage
from lightning_afm.callbacks.factory import build_compression_callback
from lightning_afm.compress import (
    CompressionPlan,
    LowRankEmbedding,
    LowRankLinear,
    collect_statistics,
    compress_targets,
    fold_into_first_linear,
    replay_plan,
    resolve_targets,
)
from lightning_afm.models import DeepFM


def _model(dm, seed=0):
    torch.manual_seed(seed)
    return DeepFM(schema=dm.schema.to_dict(), embedding_dim=8, mlp_hidden=[32, 32, 32], lr=3e-3,
                  embedding_init_std=0.01)


def _structure(model):
    return [(n, type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
            for n, m in model.named_modules()]


def _compress(model, dm, method, mlp_rank=4, emb_rank=2):
    """Both stages as the callback does them, in plain PyTorch; returns the plan."""
    plan = CompressionPlan()
    for patterns, kind, rank in ((["mlp.1.linear", "mlp.2.linear"], "linear", mlp_rank),
                                 (["embeddings.*"], "embedding", emb_rank)):
        names = resolve_targets(model, patterns, kind)
        stats = None
        if method == "afm":
            stats = collect_statistics(model, names, dm.statistics_dataloader(),
                                       lambda b: model(b["categorical"], b["numeric"]), progress=False)
        plan.extend(compress_targets(model, names, stats, rank=rank, method=method, relu=True))
    plan.append(fold_into_first_linear(model))
    return plan


def test_random_builds_the_afm_structure_with_fresh_weights(tiny_synthetic):
    dm = tiny_synthetic()
    afm, scratch = _model(dm), _model(dm)
    _compress(afm, dm, "afm")
    plan = _compress(scratch, dm, "random")
    assert _structure(scratch) == _structure(afm)
    assert sum(p.numel() for p in scratch.parameters()) == sum(p.numel() for p in afm.parameters())
    # fresh weights, not the factorisation of the trained ones
    assert not torch.allclose(scratch.mlp[1].linear.first.weight, afm.mlp[1].linear.first.weight)
    assert not torch.allclose(scratch.embeddings.C4.table.weight, afm.embeddings.C4.table.weight)
    # the factor Linears at nn.Linear's default bound 1/sqrt(fan_in); the code tables at the replaced tables' scale
    first = scratch.mlp[1].linear.first.weight
    assert first.abs().max() <= 32 ** -0.5
    table = scratch.embeddings.C4.table.weight
    assert 0.005 < float(table.std()) < 0.02
    # the plan records AFM's structure and where the weights came from; it replays on a fresh model
    entry = plan.entries[0]
    assert (entry.method, entry.flags["init"]) == ("afm", "random")
    fresh = replay_plan(_model(dm, seed=1), CompressionPlan.from_dict(plan.to_dict()))
    assert _structure(fresh) == _structure(scratch)
    fresh.load_state_dict(scratch.state_dict())


def test_random_rank_errors_name_the_module_and_change_nothing(tiny_synthetic):
    dm = tiny_synthetic()
    model = _model(dm)
    before = _structure(model)
    with pytest.raises(ValueError, match=r"'embeddings.C2': code_dim 9 is out of range"):
        compress_targets(model, ["embeddings.C2", "embeddings.C1"], None, rank=9, method="random")
    with pytest.raises(ValueError, match="method must be one of"):
        MLPStage(rank=2, method="scratch")
    assert _structure(model) == before


def test_scratch_fit_trains_the_small_structure_from_fit_start(tiny_synthetic):
    dm = tiny_synthetic()
    pl.seed_everything(0)
    model = _model(dm)
    callback = AFMCompressionCallback(
        [MLPStage(rank=4, method="random", epochs=0), EmbeddingStage(rank=2, method="random", epochs=2)],
        baseline_epochs=0, eval_splits=(), progress=False)
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    assert isinstance(model.mlp[2].linear, LowRankLinear) and model.mlp_reads_codes
    assert isinstance(model.embeddings.C1, LowRankEmbedding)
    assert [r["method"] for r in callback.history] == ["random", "random"]
    assert [r["start_epoch"] for r in callback.history] == [0, 0] and callback.history[0]["layers"] == {}
    assert callback.summary()["baseline_params"] > callback.history[1]["params"]
    # it learned: the test AUC of the small model is well above chance
    auc = trainer.test(model, datamodule=dm, verbose=False)[0]["test_auc"]
    assert auc > 0.6


def test_scratch_config_builds_from_scratch_for_as_many_epochs_as_afm(compose_app):
    scratch, afm = compose_app(["compression=scratch"]), compose_app(["compression=afm"])
    callback = build_compression_callback(scratch.compression)
    assert [s.method for s in callback.stages] == ["random", "random"]
    assert callback.baseline_epochs == 0 and callback.total_epochs == scratch.trainer.max_epochs
    assert scratch.trainer.max_epochs == afm.trainer.max_epochs
    assert [s.rank for s in callback.stages] == [afm.compression.mlp.rank, afm.compression.emb.rank]


def test_scratch_mlp_config_builds_the_mlp_structure_for_as_many_epochs_as_afm_mlp(compose_app):
    scratch, afm = compose_app(["compression=scratch_mlp"]), compose_app(["compression=afm_mlp"])
    callback = build_compression_callback(scratch.compression)
    assert [(s.name, s.method) for s in callback.stages] == [("mlp", "random")]
    assert callback.total_epochs == scratch.trainer.max_epochs == afm.trainer.max_epochs == 2
