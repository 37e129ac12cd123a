"""Module surgery, folding and plans on a toy model that follows the zoo's contract, and on the zoo."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lightning_afm.compress import (
    CompressionPlan,
    LowRankEmbedding,
    LowRankLinear,
    ModelLayout,
    OutputStatistics,
    collect_statistics,
    compress_embedding,
    compress_linear,
    compress_targets,
    default_targets,
    fold_into_first_linear,
    parameter_count,
    project_fields,
    replay_plan,
    resolve_targets,
    stack_projections,
)
from lightning_afm.models.layers.embedding import FieldEmbedding

FIELDS, VOCAB, DIM, NUMERIC = 4, [7, 11, 5, 9], 6, 3
#: The paper's default targets in the zoo's names: the 2nd and 3rd MLP Linear, every field table.
DEFAULT_MLP_TARGETS = ("mlp.1.linear", "mlp.2.linear")
DEFAULT_EMBEDDING_TARGETS = ("embeddings.*",)


class _Block(nn.Module):
    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.linear = nn.Linear(i, o)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class ToyCTR(nn.Module):
    """The zoo's contract in miniature: FM on projected embeddings, an MLP reading them (or the codes)."""

    MLP_READS_EMBEDDINGS = True

    def __init__(self, hidden=(16, 12, 10)) -> None:
        super().__init__()
        self.embeddings = FieldEmbedding([f"C{i + 1}" for i in range(FIELDS)], VOCAB, DIM, init_std=0.5)
        widths = [FIELDS * DIM + NUMERIC, *hidden]
        self.mlp = nn.Sequential(*(_Block(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.output = nn.Linear(widths[-1], 1)
        self.mlp_reads_codes = False

    # the compression contract (lightning_afm.compress.CompressibleModel), as the zoo implements it
    def compression_layout(self) -> ModelLayout:
        return ModelLayout(mlp_targets=DEFAULT_MLP_TARGETS,
                           field_tables=tuple(f"embeddings.{n}" for n in self.embeddings.module_names),
                           first_mlp_linear="mlp.0.linear", mlp_reads_embeddings=self.MLP_READS_EMBEDDINGS,
                           mlp_reads_codes=self.mlp_reads_codes)

    def set_mlp_reads_codes(self, reads_codes: bool) -> None:
        self.mlp_reads_codes = reads_codes

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        codes = self.embeddings.codes(categorical)
        emb = self.embeddings.project(codes)
        fm = 0.5 * (emb.sum(1).pow(2) - emb.pow(2).sum(1)).sum(1)
        x = codes if self.mlp_reads_codes else emb
        deep = self.output(self.mlp(torch.cat([x.flatten(1), numeric], 1))).squeeze(1)
        return fm + deep


class ToyNFM(ToyCTR):
    MLP_READS_EMBEDDINGS = False


def _data(n=256, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, v, (n,), generator=g) for v in VOCAB], 1)
    return cat, torch.rand(n, NUMERIC, generator=g, dtype=dtype)


def _batches(cat, num, size=64):
    return [{"categorical": c, "numeric": x} for c, x in zip(cat.split(size), num.split(size))]


def _forward(model):
    return lambda b: model(b["categorical"], b["numeric"])


def _model(seed=0, cls=ToyCTR):
    torch.manual_seed(seed)
    return cls().double()


def _stats(model, names):
    cat, num = _data()
    return collect_statistics(model, names, _batches(cat, num), _forward(model), progress=False)


def _compress_all(model, emb_rank=2, mlp_rank=5, relu=True, fold=True):
    plan = CompressionPlan()
    mlp_names = resolve_targets(model, DEFAULT_MLP_TARGETS, "linear")
    plan.extend(compress_targets(model, mlp_names, _stats(model, mlp_names), mlp_rank, relu=relu))
    emb_names = resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding")
    plan.extend(compress_targets(model, emb_names, _stats(model, emb_names), emb_rank))
    if fold:
        plan.append(fold_into_first_linear(model))
    return plan


def _structure(model):
    return [(n, type(m).__name__, tuple(p.shape for p in m.parameters(recurse=False))) for n, m in model.named_modules()]


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- targets


def test_resolve_targets_globs_containers_and_order():
    model = _model()
    assert resolve_targets(model, DEFAULT_MLP_TARGETS) == ["mlp.1.linear", "mlp.2.linear"]
    assert resolve_targets(model, "mlp.*.linear", "linear") == ["mlp.0.linear", "mlp.1.linear", "mlp.2.linear"]
    assert resolve_targets(model, ["mlp.2", "mlp.1.linear"]) == ["mlp.1.linear", "mlp.2.linear"]  # container
    assert resolve_targets(model, "embeddings.*", "embedding") == [f"embeddings.C{i}" for i in range(1, 5)]
    assert resolve_targets(model, "embeddings", nn.Embedding) == [f"embeddings.C{i}" for i in range(1, 5)]


def test_targets_that_match_nothing_list_the_existing_names():
    model = _model()
    with pytest.raises(ValueError, match=r"'mlp\.7\.linear' matches no Linear.*'mlp\.0\.linear', 'mlp\.1\.linear'"):
        resolve_targets(model, ["mlp.1.linear", "mlp.7.linear"])
    with pytest.raises(ValueError, match=r"matches no Embedding.*'embeddings\.C1'"):
        resolve_targets(model, "emb.*", "embedding")
    compress_linear(model, "mlp.1.linear", None, 3, method="svd")
    # parts of a compressed module are not targets, and the message says why nothing matched
    with pytest.raises(ValueError, match=r"\['mlp\.1\.linear'\] already compressed"):
        resolve_targets(model, "mlp.1.linear")
    with pytest.raises(ValueError, match=r"already compressed"):
        resolve_targets(model, "mlp.1")
    assert resolve_targets(model, "mlp.*") == ["mlp.0.linear", "mlp.2.linear"]


# --------------------------------------------------------------------------- validation before change


def test_nan_statistics_raise_before_any_module_changes():
    model = _model()
    before = copy.deepcopy(model)
    names = ["mlp.1.linear", "mlp.2.linear"]
    stats = dict(_stats(model, names))
    bad = stats["mlp.2.linear"]
    stats["mlp.2.linear"] = OutputStatistics(bad.mean, torch.full_like(bad.cov, float("nan")), bad.count)
    with pytest.raises(ValueError, match=r"mlp\.2\.linear.*NaN or Inf"):
        compress_targets(model, names, stats, 4, relu=True)
    assert _structure(model) == _structure(before) and _same_state(model, before)  # mlp.1 untouched too
    with pytest.raises(ValueError, match=r"mlp\.2\.linear.*NaN or Inf"):
        compress_linear(model, "mlp.2.linear", stats, 4)
    assert _same_state(model, before)


def test_bad_rank_or_missing_statistics_raise_before_any_module_changes():
    model = _model()
    before = copy.deepcopy(model)
    stats = _stats(model, ["mlp.1.linear", "mlp.2.linear", "embeddings.C1"])
    with pytest.raises(ValueError, match=r"'mlp\.2\.linear': rank 11 is out of range.*between 1 and 10"):
        compress_targets(model, ["mlp.1.linear", "mlp.2.linear"], stats, 11)
    with pytest.raises(ValueError, match=r"rank 0 is out of range"):
        compress_embedding(model, "embeddings.C1", stats, 0)
    with pytest.raises(ValueError, match=r"between 1 and 6"):
        compress_embedding(model, "embeddings.C1", stats, 7, method="svd")
    with pytest.raises(ValueError, match=r"no statistics for 'mlp\.0\.linear'"):
        compress_linear(model, "mlp.0.linear", stats, 3)
    with pytest.raises(ValueError, match="run collect_statistics first"):
        compress_linear(model, "mlp.0.linear", None, 3)
    with pytest.raises(ValueError, match="output width is 12"):
        compress_linear(model, "mlp.1.linear", stats["mlp.2.linear"], 3)
    with pytest.raises(ValueError, match="not an nn.Embedding"):
        compress_embedding(model, "mlp.1.linear", stats, 3)
    with pytest.raises(ValueError, match="method must be one of"):
        compress_linear(model, "mlp.1.linear", stats, 3, method="pca")
    assert _structure(model) == _structure(before) and _same_state(model, before)


def test_compressed_modules_at_full_rank_keep_outputs_and_counts_shrink():
    model = _model()
    cat, num = _data(seed=1)
    with torch.no_grad():
        ref = model(cat, num)
    full = copy.deepcopy(model)
    names = ["mlp.1.linear", "mlp.2.linear"]
    stats = _stats(full, names)
    compress_linear(full, "mlp.1.linear", stats, 12)  # k = m: exact
    compress_linear(full, "mlp.2.linear", stats, 10)
    emb = resolve_targets(full, "embeddings.*", "embedding")
    entries = compress_targets(full, emb, _stats(full, emb), DIM)
    assert [e.kind for e in entries] == ["embedding"] * FIELDS and entries[0].flags["kept_variance"] == pytest.approx(1)
    with torch.no_grad():
        torch.testing.assert_close(full(cat, num), ref, rtol=0, atol=1e-9)
    small = copy.deepcopy(model)
    _compress_all(small, emb_rank=2, mlp_rank=4, fold=False)
    # exact counts: mlp.1 16->12 at k=4: 16*4+4 + 4*12+12; mlp.2 12->10: 12*4+4 + 4*10+10;
    # tables: (rows*2) + 2*6+6 each
    before = parameter_count(model)
    removed = (16 * 12 + 12) + (12 * 10 + 10) + sum(VOCAB) * DIM
    added = (16 * 4 + 4 + 4 * 12 + 12) + (12 * 4 + 4 + 4 * 10 + 10) + sum(VOCAB) * 2 + FIELDS * (2 * 6 + 6)
    assert parameter_count(small) == before - removed + added


# --------------------------------------------------------------------------- modules


def test_low_rank_modules_shapes_and_stacked_projection():
    layer = LowRankLinear(8, 6, 3, relu=True, first_bias=False)
    assert layer.first.weight.shape == (3, 8) and layer.first.bias is None and layer.second.weight.shape == (6, 3)
    assert "rank=3" in repr(layer) and "relu=True" in repr(layer)
    assert layer(torch.randn(2, 5, 8)).shape == (2, 5, 6)
    tables = [LowRankEmbedding(v, DIM, 2) for v in VOCAB]
    tables[1] = LowRankEmbedding(VOCAB[1], DIM, 2, projection_bias=False)
    weight, bias = stack_projections(tables)
    assert weight.shape == (FIELDS, DIM, 2) and bias.shape == (FIELDS, DIM) and torch.all(bias[1] == 0)
    codes = torch.randn(5, FIELDS, 2)
    loop = torch.stack([t.project(codes[:, i]) for i, t in enumerate(tables)], 1)
    torch.testing.assert_close(project_fields(codes, weight, bias), loop)
    with pytest.raises(ValueError, match="out of range"):
        LowRankLinear(4, 3, 4)
    with pytest.raises(ValueError, match="share embedding_dim and code_dim"):
        stack_projections([LowRankEmbedding(3, 6, 2), LowRankEmbedding(3, 6, 3)])


# --------------------------------------------------------------------------- fold


def test_folded_model_equals_the_unfolded_compressed_one():
    model = _model()
    _compress_all(model, emb_rank=2, mlp_rank=5, fold=False)
    cat, num = _data(seed=2)
    with torch.no_grad():
        unfolded = model(cat, num)
    entry = fold_into_first_linear(model)
    assert model.mlp_reads_codes is True
    assert model.mlp[0].linear.weight.shape == (16, FIELDS * 2 + NUMERIC)
    assert entry.kind == "fold" and entry.shape == [16, FIELDS * DIM + NUMERIC]
    with torch.no_grad():
        torch.testing.assert_close(model(cat, num), unfolded, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="already folded"):
        fold_into_first_linear(model)


def test_fold_into_a_compressed_first_linear_and_without_biases():
    model = _model()
    compress_linear(model, "mlp.0.linear", None, 4, method="svd")  # first MLP Linear is factored too
    emb = resolve_targets(model, "embeddings.*", "embedding")
    compress_targets(model, emb, None, 3, method="svd")  # SVD tables: projections without bias
    cat, num = _data(seed=3)
    with torch.no_grad():
        unfolded = model(cat, num)
    entry = fold_into_first_linear(model)
    assert entry.name == "mlp.0.linear.first" and entry.flags["bias"] is False
    with torch.no_grad():
        torch.testing.assert_close(model(cat, num), unfolded, rtol=0, atol=1e-10)


def test_fold_refuses_models_where_it_is_impossible():
    nfm = _model(cls=ToyNFM)
    with pytest.raises(ValueError, match=r"ToyNFM.*mlp_reads_embeddings=False"):
        fold_into_first_linear(nfm)
    model = _model()
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"must be compressed first.*embeddings\.C1"):
        fold_into_first_linear(model)
    compress_embedding(model, "embeddings.C1", None, 2, method="svd")
    with pytest.raises(ValueError, match=r"embeddings\.C2"):
        fold_into_first_linear(model)
    assert model.mlp_reads_codes is False and _same_state(model.mlp, before.mlp)
    plain = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="does not implement the compression contract"):
        fold_into_first_linear(plain)


# --------------------------------------------------------------------------- plan


def test_plan_json_round_trip_and_replay_loads_the_compressed_state():
    model = _model(seed=0)
    plan = _compress_all(model, emb_rank=2, mlp_rank=5, relu=True, fold=True)
    assert [e.kind for e in plan] == ["linear"] * 2 + ["embedding"] * FIELDS + ["fold"]
    text = plan.to_json()
    restored = CompressionPlan.from_json(text)
    assert restored.to_dict() == json.loads(text) == plan.to_dict()

    fresh = _model(seed=123)  # different weights: only the structure must match
    replay_plan(fresh, restored)
    assert fresh.mlp_reads_codes is True
    assert _structure(fresh) == _structure(model)
    fresh.load_state_dict(model.state_dict())  # strict
    cat, num = _data(seed=4)
    with torch.no_grad():
        assert torch.equal(fresh(cat, num), model(cat, num))
    # a plan dict works too, and a plan for another architecture is refused clearly
    other = _model(seed=0)
    replay_plan(other, plan.to_dict())
    wrong = ToyCTR(hidden=(16, 12, 9)).double()
    with pytest.raises(ValueError, match=r"plan entry 1 .*mlp\.2\.linear.*same model architecture"):
        replay_plan(wrong, plan)
    with pytest.raises(ValueError, match="unsupported compression plan version"):
        CompressionPlan.from_dict({"version": 99, "entries": []})
    with pytest.raises(ValueError, match="kind must be one of"):
        CompressionPlan.from_dict({"version": 1, "entries": [{"name": "x", "kind": "conv", "shape": [1, 1]}]})


# --------------------------------------------------------------------------- the zoo


def _zoo(name):
    from lightning_afm.data.schema import Schema
    from lightning_afm.models import build_model

    torch.manual_seed(0)
    schema = Schema.from_vocab_sizes(VOCAB, numeric=NUMERIC)
    return build_model(name, schema, embedding_dim=DIM, mlp_hidden=[16, 12, 10], dropout=0.5, embedding_init_std=0.3)


@pytest.mark.parametrize("name", ["deepfm", "dcn", "dcnv2", "gdcn", "autoint"])
def test_zoo_models_compress_fold_and_replay(name):
    model = _zoo(name)
    cat, num = _data(seed=5, dtype=torch.float32)
    batches = _batches(cat, num)
    mlp = resolve_targets(model, DEFAULT_MLP_TARGETS, "linear")
    plan = CompressionPlan()
    plan.extend(compress_targets(model, mlp, collect_statistics(model, mlp, batches, _forward(model), progress=False), 4, relu=True))
    emb = resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding")
    assert emb == [f"embeddings.C{i}" for i in range(1, FIELDS + 1)]  # not the LR tables
    assert default_targets(model, "embeddings") == emb and tuple(default_targets(model, "mlp")) == DEFAULT_MLP_TARGETS
    plan.extend(compress_targets(model, emb, collect_statistics(model, emb, batches, _forward(model), progress=False), 2))
    model.eval()
    with torch.no_grad():
        unfolded = model(cat, num)
    plan.append(fold_into_first_linear(model))
    with torch.no_grad():
        torch.testing.assert_close(model(cat, num), unfolded, rtol=1e-5, atol=1e-5)
    fresh = _zoo(name)
    replay_plan(fresh, CompressionPlan.from_json(plan.to_json()))
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(cat, num), model(cat, num))


@pytest.mark.parametrize("name", ["nfm", "fibinet"])
def test_zoo_models_that_cannot_fold_say_so(name):
    model = _zoo(name)
    emb = resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding")
    compress_targets(model, emb, None, 2, method="svd")
    with pytest.raises(ValueError, match="mlp_reads_embeddings=False"):
        fold_into_first_linear(model)
