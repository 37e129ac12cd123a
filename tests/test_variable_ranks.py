"""Per-field embedding ranks end to end: plan, fold, replay from a plan, inference structures, bench.

A budgeted compression gives each field its own code width ``k_i``; the model then reads codes
as ``[B, sum_i k_i]`` and the fold's first MLP Linear has ``sum_i k_i + N`` inputs. Each check
compares against an independent computation: the unfolded model, a fresh model replayed from
the plan, the training model's eager forward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_afm.compress import (
    CompressionPlan,
    LowRankEmbedding,
    compress_targets,
    fold_into_first_linear,
    get_submodule,
    replay_plan,
)
from lightning_afm.compress.surgery import rank_for
from lightning_afm.data.schema import Schema
from lightning_afm.inference import optimize_for_inference
from lightning_afm.inference.lookups import CalledFields, ConcatenatedLookup, build_lookup
from lightning_afm.inference.projection import GroupedProjection, build_projection
from lightning_afm.inference.sharing import Tensors
from lightning_afm.models import MODELS, build_model

VOCAB = [9, 7, 5, 11, 6]
SCHEMA = Schema.from_vocab_sizes(VOCAB, numeric=2)
HPARAMS = dict(embedding_dim=6, mlp_hidden=[8, 8, 8], dropout=0.5)
RANKS = [1, 3, 2, 3, 5]  # three distinct widths, one field alone in its group
TOL = dict(rtol=0.0, atol=1e-5)


def _batch(rows=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, v, (rows,), generator=g) for v in VOCAB], dim=1)
    return cat, torch.rand(rows, 2, generator=g)


def _model(name="deepfm", seed=0):
    torch.manual_seed(seed)
    model = build_model(name, SCHEMA, **HPARAMS)
    with torch.no_grad():  # biases away from zero so a dropped term would show; small enough for float32 to 1e-5
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def _ranks(model):
    return dict(zip(model.compression_layout().field_tables, RANKS))


def _per_field(model, method="svd"):
    """``model`` with SVD tables of the per-field ``RANKS`` (no statistics needed); its plan entries."""
    return compress_targets(model, list(_ranks(model)), None, _ranks(model), method=method)


def _out(model, cat, num):
    with torch.no_grad():
        return model.eval()(cat, num)


def test_codes_are_concatenated_per_field_and_entries_carry_each_rank():
    model = _model()
    entries = _per_field(model)
    assert [e.rank for e in entries] == RANKS
    assert model.embeddings.code_dims == RANKS and not model.embeddings.uniform_codes
    cat, _ = _batch()
    codes = model.embeddings.codes(cat)
    assert codes.shape == (cat.shape[0], sum(RANKS))
    # field 1's columns are its own table's rows
    tables = model.embeddings.tables()
    np.testing.assert_allclose(codes[:, 1:4].detach().numpy(), tables[1].codes(cat[:, 1]).detach().numpy())
    emb = model.embeddings.project(codes)
    expect = torch.stack([t(cat[:, i]) for i, t in enumerate(tables)], dim=1)
    np.testing.assert_allclose(emb.detach().numpy(), expect.detach().numpy(), atol=1e-6)


def test_a_rank_mapping_missing_a_target_names_it():
    with pytest.raises(ValueError, match="no rank given for 'b'"):
        rank_for({"a": 2}, "b")
    assert rank_for(3, "b") == 3


@pytest.mark.parametrize("name", ["deepfm", "dcn", "dcnv2", "gdcn", "autoint"])
def test_fold_with_per_field_ranks_matches_the_unfolded_model(name):
    model = _model(name)
    _per_field(model)
    cat, num = _batch()
    before = _out(model, cat, num)
    entry = fold_into_first_linear(model)
    first = get_submodule(model, entry.name)
    assert first.in_features == sum(RANKS) + 2 and entry.flags["code_dims"] == RANKS
    np.testing.assert_allclose(_out(model, cat, num).numpy(), before.numpy(), **TOL)


def test_checkpoint_of_a_variable_rank_model_loads_into_a_fresh_model():
    model = _model()
    plan = CompressionPlan(_per_field(model))
    plan.append(fold_into_first_linear(model))
    cat, num = _batch()
    fresh = _model(seed=1)
    replay_plan(fresh, CompressionPlan.from_json(plan.to_json()))  # through JSON, as a checkpoint holds it
    fresh.load_state_dict(model.state_dict())
    assert fresh.embeddings.code_dims == RANKS and fresh.mlp_reads_codes
    np.testing.assert_allclose(_out(fresh, cat, num).numpy(), _out(model, cat, num).numpy(), atol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("fold", [False, True])
def test_inference_form_of_variable_ranks_matches_eager(name, fold):
    model = _model(name)
    _per_field(model, method="svd")
    if fold and model.compression_layout().mlp_reads_embeddings:
        fold_into_first_linear(model)
    cat, num = _batch()
    expect = _out(model, cat, num)
    fast = optimize_for_inference(model)
    assert isinstance(fast.lookup.codes, ConcatenatedLookup)
    assert isinstance(fast.project, GroupedProjection)
    np.testing.assert_allclose(fast(cat, num).numpy(), expect.numpy(), **TOL)
    np.testing.assert_allclose(torch.jit.script(fast)(cat, num).numpy(), expect.numpy(), **TOL)


def test_grouped_projection_without_biases_and_called_fields_for_other_tables():
    tables = [LowRankEmbedding(v, 6, k, projection_bias=False) for v, k in zip(VOCAB, RANKS)]
    cat, _ = _batch()
    ids = cat.t().contiguous()
    lookup, projection = build_lookup(tables, Tensors()), build_projection(tables, Tensors())
    expect = torch.stack([t(cat[:, i]) for i, t in enumerate(tables)], dim=1)
    with torch.no_grad():
        np.testing.assert_allclose(projection(lookup(ids)).numpy(), expect.detach().numpy(), **TOL)
    # a subclass may change what a lookup does: called as it is, the widths still concatenated
    class Odd(LowRankEmbedding):
        pass

    odd = [Odd(v, 6, k) for v, k in zip(VOCAB, RANKS)]
    lookup, projection = build_lookup(odd, Tensors()), build_projection(odd, Tensors())
    assert isinstance(lookup, CalledFields) and isinstance(projection, CalledFields)
    expect = torch.stack([t(cat[:, i]) for i, t in enumerate(odd)], dim=1)
    with torch.no_grad():
        codes = lookup(ids)
        assert codes.shape == (cat.shape[0], sum(RANKS))
        np.testing.assert_allclose(projection(codes).numpy(), expect.numpy(), **TOL)
