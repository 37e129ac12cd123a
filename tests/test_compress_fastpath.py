"""The batched inference paths of the compressed modules give what the per-field loop gives.

``FieldEmbedding.codes`` / ``project``, ``LinearLogit.lookup``, ``LowRankLinear`` and
``project_fields`` take fused paths (rows gathered straight into one ``[B, F, d]`` tensor,
one batched product for all projections, the ReLU between the factors in place). These tests
run all seven models in their compressed structures through those paths and through a
reference written here (one module call per field, stacked; the ReLU out of place) and
compare outputs, gradients, hooks and state dicts.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_afm.compress import (
    LowRankEmbedding,
    LowRankLinear,
    TTEmbedding,
    collect_statistics,
    fold_into_first_linear,
    get_submodule,
    project_fields,
    resolve_targets,
    set_submodule,
    stack_projections,
)
from lightning_afm.data.schema import Schema
from lightning_afm.models import DEFAULT_EMBEDDING_TARGETS, DEFAULT_MLP_TARGETS, MODELS, build_model
from lightning_afm.models.layers.embedding import FieldEmbedding
from lightning_afm.models.layers.linear_logit import LinearLogit

VOCAB = [9, 7, 5, 11]
SCHEMA = Schema.from_vocab_sizes(VOCAB, numeric=2)
HPARAMS = dict(embedding_dim=4, mlp_hidden=[8, 8, 8], dropout=0.5)
TOL = dict(rtol=0.0, atol=1e-5)


# --------------------------------------------------------------------------- the reference


def _reference_codes(self, categorical):
    outs = []
    for i, table in enumerate(self.tables()):
        idx = categorical[:, i]
        outs.append(table.codes(idx) if hasattr(table, "codes") else table(idx))
    return torch.stack(outs, dim=1)


def _reference_project(self, codes):
    outs = []
    for i, table in enumerate(self.tables()):
        outs.append(table.project(codes[:, i]) if hasattr(table, "project") else codes[:, i])
    return torch.stack(outs, dim=1)


def _reference_lookup(self, categorical):
    return torch.cat([t(categorical[:, i]) for i, t in enumerate(self.tables())], dim=1)


def _reference_low_rank(self, x):
    h = self.first(x)
    return self.second(torch.relu(h) if self.relu else h)


@pytest.fixture
def per_field_loop(monkeypatch):
    """A context manager that runs the models through the per-field reference."""

    class _Loop:
        def __enter__(self):
            monkeypatch.setattr(FieldEmbedding, "codes", _reference_codes)
            monkeypatch.setattr(FieldEmbedding, "project", _reference_project)
            monkeypatch.setattr(LinearLogit, "lookup", _reference_lookup)
            monkeypatch.setattr(LowRankLinear, "forward", _reference_low_rank)

        def __exit__(self, *exc):
            monkeypatch.undo()

    return _Loop()


# --------------------------------------------------------------------------- structures


def _batch(rows=33, seed=0, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, v, (rows,), generator=g) for v in VOCAB], dim=1).to(dtype)
    return cat, torch.rand(rows, 2, generator=g)


def _compressed(name: str, structure: str, seed: int = 0):
    """A small model in one of the benchmark's structures, with random (finite) factors."""
    torch.manual_seed(seed)
    model = build_model(name, SCHEMA, **HPARAMS)
    if structure in ("afm_mlp", "afm_emb"):
        for target in resolve_targets(model, DEFAULT_MLP_TARGETS, "linear"):
            old = get_submodule(model, target)
            set_submodule(model, target, LowRankLinear(old.in_features, old.out_features, 3, relu=True))
    if structure == "afm_emb":
        for target in resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding"):
            old = get_submodule(model, target)
            set_submodule(model, target, LowRankEmbedding(old.num_embeddings, old.embedding_dim, 2))
        if type(model).MLP_READS_EMBEDDINGS:
            fold_into_first_linear(model)
    with torch.no_grad():  # biases away from zero, so a missed bias would show
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    return model


STRUCTURES = [(name, s) for name in MODELS for s in ("baseline", "afm_mlp", "afm_emb")]


# --------------------------------------------------------------------------- whole models


@pytest.mark.parametrize("name,structure", STRUCTURES)
def test_models_give_the_per_field_loop_outputs_in_eval_and_train_mode(name, structure, per_field_loop):
    model = _compressed(name, structure)
    cat, num = _batch()
    for train in (False, True):
        model.train(train)
        for context in (torch.inference_mode, torch.no_grad, torch.enable_grad):
            with context():
                torch.manual_seed(1)  # the same dropout masks for both paths
                fast = model(cat, num)
                with per_field_loop:
                    torch.manual_seed(1)
                    reference = model(cat, num)
            torch.testing.assert_close(fast, reference, **TOL)
    # the parts the L2 term reads, too
    with torch.inference_mode():
        model.eval()
        _, codes, lr = model.forward_parts(cat, num)
        with per_field_loop:
            _, ref_codes, ref_lr = model.forward_parts(cat, num)
    torch.testing.assert_close(codes, ref_codes, **TOL)
    torch.testing.assert_close(lr, ref_lr, **TOL)


@pytest.mark.parametrize("name", ["deepfm", "nfm", "autoint", "fibinet", "dcnv2"])
def test_gradients_match_the_per_field_loop(name, per_field_loop):
    """Training: the loss with its L2 term back-propagates to the same gradients."""
    cat, num = _batch(rows=17, seed=3)
    label = torch.rand(17).round()
    grads = []
    for loop in (False, True):
        model = _compressed(name, "afm_emb", seed=5).train()
        torch.manual_seed(7)
        if loop:
            with per_field_loop:
                logits, codes, lr = model.forward_parts(cat, num)
        else:
            logits, codes, lr = model.forward_parts(cat, num)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, label) + model.l2_penalty(codes, lr)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    fast, reference = grads
    assert fast.keys() == reference.keys()
    assert any(".projection." in n for n in fast) and any(".table." in n for n in fast)
    for key in reference:
        torch.testing.assert_close(fast[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_keys_and_shapes_are_the_per_field_modules(name):
    """Checkpoints and plan replay address each field's table by name: the keys stay put."""
    model = _compressed(name, "afm_emb")
    state = model.state_dict()
    for field in model.embeddings.module_names:
        assert state[f"embeddings.{field}.table.weight"].shape[1] == 2
        assert state[f"embeddings.{field}.projection.weight"].shape == (4, 2)
        assert state[f"linear.{field}.weight"].shape[1] == 1
    assert state["mlp.1.linear.first.weight"].shape == (3, 8)
    fresh = _compressed(name, "afm_emb", seed=1)
    fresh.load_state_dict(state)
    cat, num = _batch()
    with torch.inference_mode():
        torch.testing.assert_close(fresh.eval()(cat, num), model.eval()(cat, num), rtol=0, atol=0)


# --------------------------------------------------------------------------- the layers


def test_codes_are_one_contiguous_tensor_equal_to_each_table_lookup():
    emb = FieldEmbedding(["a", "b", "c"], [10, 20, 30], embedding_dim=5, init_std=1.0)
    cat = torch.stack([torch.randint(0, v, (64,)) for v in (10, 20, 30)], 1)
    with torch.inference_mode():
        codes = emb.codes(cat)
        codes32 = emb.codes(cat.to(torch.int32))
    assert codes.shape == (64, 3, 5) and codes.is_contiguous()
    for i, table in enumerate(emb.tables()):
        assert torch.equal(codes[:, i], table.weight[cat[:, i]])
    assert torch.equal(codes32, codes)
    with pytest.raises(IndexError):
        with torch.inference_mode():
            emb.codes(torch.full((2, 3), 10))  # row 10 is past field a's table (its rows are 0..9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_codes_of_any_row_size_and_layout_equal_each_table_lookup(dtype, width):
    """Small rows are gathered as single words, others row by row, strided tables as they are."""
    emb = FieldEmbedding(["a", "b", "c"], [10, 20, 30], embedding_dim=width, init_std=1.0).to(dtype)
    with torch.no_grad():  # a table whose rows are not contiguous, and one that is a slice
        emb.b.weight = nn.Parameter(torch.randn(width, 20, dtype=dtype).t())
        emb.c.weight = nn.Parameter(torch.randn(31 * width + 1, dtype=dtype)[1:].view(31, width)[1:])
    cat = torch.stack([torch.randint(0, v, (50,)) for v in (10, 20, 30)], 1)
    with torch.inference_mode():
        codes = emb.codes(cat)
    assert codes.dtype == dtype and codes.is_contiguous()
    for i, table in enumerate(emb.tables()):
        assert torch.equal(codes[:, i], table.weight[cat[:, i]])


def test_linear_logit_lookup_equals_each_table():
    lr = LinearLogit(["a", "b"], [6, 8], num_numeric=1, init_std=1.0)
    cat = torch.stack([torch.randint(0, 6, (40,)), torch.randint(0, 8, (40,))], 1)
    with torch.no_grad():
        weights = lr.lookup(cat)
    assert weights.shape == (40, 2)
    expected = torch.stack([lr.a.weight[cat[:, 0], 0], lr.b.weight[cat[:, 1], 0]], 1)
    assert torch.equal(weights, expected)
    assert LinearLogit([], [], num_numeric=2).lookup(torch.zeros(3, 0, dtype=torch.long)).shape == (3, 0)


def test_project_fields_equals_each_projection_with_and_without_autograd():
    tables = [LowRankEmbedding(v, 6, 3) for v in VOCAB]
    tables[2] = LowRankEmbedding(VOCAB[2], 6, 3, projection_bias=False)
    codes = torch.randn(25, len(VOCAB), 3)
    loop = torch.stack([t.project(codes[:, i]) for i, t in enumerate(tables)], 1)
    with torch.inference_mode():
        weight, bias = stack_projections(tables)
        fast = project_fields(codes, weight, bias)
        no_bias = project_fields(codes, weight)
    assert fast.is_contiguous() and fast.shape == (25, len(VOCAB), 6)
    torch.testing.assert_close(fast, loop.detach(), **TOL)
    torch.testing.assert_close(no_bias, loop.detach() - bias, **TOL)

    # autograd: the same gradients for the codes and for each table's projection
    codes.requires_grad_(True)
    upstream = torch.randn(25, len(VOCAB), 6)
    inputs = [codes] + [p for t in tables for p in t.projection.parameters()]
    loop = torch.stack([t.project(codes[:, i]) for i, t in enumerate(tables)], 1)
    loop_grads = torch.autograd.grad((loop * upstream).sum(), inputs)
    out = LowRankEmbedding.project_all(tables, codes)
    torch.testing.assert_close(out, loop, **TOL)
    fast_grads = torch.autograd.grad((out * upstream).sum(), inputs)
    for a, b in zip(fast_grads, loop_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_low_rank_linear_relu_in_place_gives_the_same_values_and_gradients():
    layer = LowRankLinear(7, 5, 3, relu=True)
    x = torch.randn(11, 7, requires_grad=True)
    out = layer(x)
    reference = layer.second(torch.relu(layer.first(x)))
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    g1 = torch.autograd.grad(out.sum(), [x, layer.first.weight, layer.second.weight])
    g2 = torch.autograd.grad(reference.sum(), [x, layer.first.weight, layer.second.weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a hook on the first factor sees its output before the ReLU, not overwritten by it
    seen = {}
    layer.first.register_forward_hook(lambda m, i, o: seen.setdefault("h", o))
    with torch.inference_mode():
        layer(x.detach())
        expected = layer.first(x.detach())
    assert (seen["h"] < 0).any() and torch.equal(seen["h"], expected)


def test_forward_hooks_on_tables_and_projections_still_fire():
    """Compression collects its statistics with forward hooks: no batched path may skip them."""
    model = _compressed("deepfm", "afm_emb").eval()
    cat, num = _batch()
    seen = {}
    target = model.embeddings.tables()[1]
    handles = [
        target.table.register_forward_hook(lambda m, i, o: seen.setdefault("codes", o)),
        target.projection.register_forward_hook(lambda m, i, o: seen.setdefault("projected", o)),
        model.linear.tables()[2].register_forward_hook(lambda m, i, o: seen.setdefault("lr", o)),
    ]
    with torch.inference_mode():
        out = model(cat, num)
        for h in handles:
            h.remove()
        torch.testing.assert_close(model(cat, num), out, **TOL)
        torch.testing.assert_close(seen["codes"], target.table.weight[cat[:, 1]], **TOL)
        torch.testing.assert_close(seen["projected"], target.project(seen["codes"]), **TOL)
        torch.testing.assert_close(seen["lr"], model.linear.tables()[2].weight[cat[:, 2]], **TOL)

    # and the statistics pass on plain tables gives the looked-up rows' statistics
    base = _compressed("deepfm", "baseline")
    stats = collect_statistics(base, ["embeddings.C2"], [{"c": cat, "n": num}], lambda b: base(b["c"], b["n"]))
    rows = base.embeddings.tables()[1].weight[cat[:, 1]].detach().double()
    torch.testing.assert_close(stats["embeddings.C2"].mean, rows.mean(0))


def test_tables_that_must_be_called_are_called():
    """max_norm renormalises rows on lookup, TT tables compute theirs, a mix of kinds projects
    field by field: each gives what calling every table gives."""
    torch.manual_seed(0)
    emb = FieldEmbedding(["a", "b", "c"], [10, 12, 8], embedding_dim=4, init_std=3.0)
    cat = torch.stack([torch.randint(0, v, (30,)) for v in (10, 12, 8)], 1)
    emb.a = nn.Embedding(10, 4, max_norm=1.0)
    emb.b = TTEmbedding(12, 4, tt_rank=2)
    emb.c = LowRankEmbedding(8, 4, 4)  # k = t: same width as the plain tables
    reference_emb = copy.deepcopy(emb)
    with torch.inference_mode():
        out = emb(cat)
        expected = torch.stack([reference_emb.a(cat[:, 0]), reference_emb.b(cat[:, 1]), reference_emb.c(cat[:, 2])], 1)
    torch.testing.assert_close(out, expected, **TOL)
    assert emb.a.weight[cat[:, 0]].norm(dim=1).max() <= 1.0 + 1e-6  # the lookup renormalised its rows


def test_sparse_and_padding_tables_keep_their_gradients_under_training():
    emb = FieldEmbedding(["a", "b"], [10, 12], embedding_dim=4)
    emb.a = LowRankEmbedding(10, 4, 2, sparse=True)
    emb.b = LowRankEmbedding(12, 4, 2, padding_idx=0)
    cat = torch.tensor([[1, 0], [3, 0], [1, 5]])
    emb(cat).sum().backward()
    assert emb.a.table.weight.grad.is_sparse
    assert torch.all(emb.b.table.weight.grad[0] == 0) and emb.b.table.weight.grad[5].abs().sum() > 0
