"""``optimize_for_inference`` gives the training model's eval-mode outputs, on every model of the zoo.

All seven models, each as the baseline, +AFM MLP (``LowRankLinear``) and +AFM EMB
(``LowRankEmbedding``, folded into the first MLP Linear where the model allows it), run through
their inference form (batched gathers, one batched projection, in-place ReLU, aligned cross
networks, FiBiNet's written bilinear outputs) and through the training model's own forward
(one module call per field, stacked), eager and TorchScript, to 1e-5 in float32.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lightning_afm.compress import (
    LowRankEmbedding,
    LowRankLinear,
    TTEmbedding,
    compress_embeddings_pq,
    compress_embeddings_qr,
    compress_embeddings_ttd,
    fold_into_first_linear,
    get_submodule,
    resolve_targets,
    select_qr_tables,
    select_tt_tables,
    set_submodule,
)
from lightning_afm.data.schema import Schema
from lightning_afm.inference import InferenceModel, Tensors, optimize_for_inference
from lightning_afm.inference.dense import FactoredLinear, build_linear
from lightning_afm.inference.lookups import CalledFields, FusedLookup, GatheredLookup, SeparateLookups, build_lookup
from lightning_afm.inference.projection import BatchedProjection, build_projection
from lightning_afm.models import DEFAULT_EMBEDDING_TARGETS, DEFAULT_MLP_TARGETS, MODELS, DeepFM, build_model
from lightning_afm.models.layers.embedding import FieldEmbedding

VOCAB = [9, 7, 5, 11]
SCHEMA = Schema.from_vocab_sizes(VOCAB, numeric=2)
HPARAMS = dict(embedding_dim=4, mlp_hidden=[8, 8, 8], dropout=0.5)
TOL = dict(rtol=0.0, atol=1e-5)


def _batch(rows=33, seed=0, dtype=torch.int64, numeric=2):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, v, (rows,), generator=g) for v in VOCAB], dim=1).to(dtype)
    return cat, torch.rand(rows, numeric, generator=g)


def _compressed(name: str, structure: str, seed: int = 0, schema: Schema = SCHEMA, **hparams):
    """A small model in one of the benchmark's structures, with random (finite) factors."""
    torch.manual_seed(seed)
    model = build_model(name, schema, **{**HPARAMS, **hparams})
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


def _plain(model, cat, num):
    with torch.no_grad():
        return model.eval()(cat, num)


STRUCTURES = [(name, s) for name in MODELS for s in ("baseline", "afm_mlp", "afm_emb")]


# --------------------------------------------------------------------------- whole models


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("name,structure", STRUCTURES)
def test_every_model_and_structure_gives_the_plain_outputs_eager_and_scripted(name, structure, fuse):
    model = _compressed(name, structure, batch_norm=True)
    model.train()
    with torch.no_grad():  # move the batch-norm running statistics off their defaults
        model(*_batch(rows=40, seed=9))
    fast = optimize_for_inference(model, fuse=fuse)
    assert isinstance(fast, InferenceModel) and not fast.training
    # fused where the row (k=2 codes + LR weight, padded to 4 floats) is one word: +AFM EMB
    assert isinstance(fast.lookup, FusedLookup if fuse and structure == "afm_emb" else SeparateLookups)
    # code space: DeepFM and DCN folded and NFM on factored tables never build the d-dim embeddings (AutoInt
    # only where its first layer folds too, not at d = 4: tests/test_inference_attention.py)
    assert fast.build_embeddings is not (structure == "afm_emb" and name in ("deepfm", "nfm", "dcn"))
    # DCNv2's and GDCN's first cross product reads the codes (from 4 rows on here: 33 and 17 below, not 1)
    if name in ("dcnv2", "gdcn"):
        assert fast.deep.cross_reads_codes is (structure == "afm_emb")
    scripted = torch.jit.script(fast)
    for rows, dtype in ((33, torch.int64), (1, torch.int64), (17, torch.int32)):  # batch size is dynamic
        cat, num = _batch(rows=rows, dtype=dtype)
        expected = _plain(model, cat, num)
        torch.testing.assert_close(fast(cat, num), expected, **TOL)
        torch.testing.assert_close(scripted(cat, num), expected, **TOL)
    assert model.training is False  # _plain put it in eval; the inference form never touched it


@pytest.mark.parametrize("name", list(MODELS))
def test_models_without_numeric_fields_and_folded_fibinet(name):
    schema = Schema.from_vocab_sizes(VOCAB)
    model = _compressed(name, "afm_emb", schema=schema, embedding_dim=16)  # FiBiNet folds at d=16, k=2
    fast = optimize_for_inference(model)
    cat, _ = _batch()
    expected = _plain(model, cat, None)
    torch.testing.assert_close(fast(cat), expected, **TOL)
    torch.testing.assert_close(torch.jit.script(fast)(cat), expected, **TOL)


@pytest.mark.parametrize("name", ["deepfm", "fibinet", "gdcn"])
def test_tt_tables_and_svd_factors_are_called_as_they_are(name):
    """Kinds without a faster form here (TT-Rec tables and LR tables, SVD's bias-free factors)."""
    model = _compressed(name, "afm_emb")
    for target in ("mlp.1.linear", "mlp.2.linear"):  # SVD: the first factor without a bias
        old = get_submodule(model, target)
        set_submodule(model, target, LowRankLinear(old.in_features, old.out_features, 3, first_bias=False))
    tt = _compressed(name, "baseline")
    names = select_tt_tables(tt, resolve_targets(tt, DEFAULT_EMBEDDING_TARGETS, "embedding"), 1, True)
    compress_embeddings_ttd(tt, names, tt_rank=2, init="random")
    cat, num = _batch()
    for m in (model, tt):
        fast = optimize_for_inference(m)
        torch.testing.assert_close(fast(cat, num), _plain(m, cat, num), **TOL)
    assert isinstance(optimize_for_inference(tt).lookup.codes, CalledFields)


@pytest.mark.parametrize("name", ["deepfm", "fibinet", "gdcn"])
@pytest.mark.parametrize("method", ["qr", "pq"])
def test_qr_and_pq_tables_are_called_as_they_are_eager_and_scripted(name, method):
    """The table-only kinds have no faster form here: their tables are called, and script."""
    model = _compressed(name, "afm_mlp")
    names = resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding")
    if method == "qr":  # 5 rows at 2 collisions: 3 + 2 rows, so every table but one shrinks
        compress_embeddings_qr(model, select_qr_tables(model, names, 2), 2, "mult", "random")
    else:
        compress_embeddings_pq(model, names, 2, 4, iterations=2)
    fast = optimize_for_inference(model)
    assert isinstance(fast.lookup.codes, CalledFields)
    cat, num = _batch()
    expected = _plain(model, cat, num)
    torch.testing.assert_close(fast(cat, num), expected, **TOL)
    torch.testing.assert_close(torch.jit.script(fast)(cat, num), expected, **TOL)


def test_shared_weights_follow_training_and_a_copy_does_not():
    model = _compressed("dcnv2", "afm_emb")
    shared, snapshot = optimize_for_inference(model), optimize_for_inference(model, copy=True)
    cat, num = _batch()
    before = _plain(model, cat, num)
    # a training step: train mode, gradients, an in-place optimizer update
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model(cat, num).sum().backward()
    opt.step()
    after = _plain(model, cat, num)
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(shared(cat, num), after, **TOL)
    torch.testing.assert_close(snapshot(cat, num), before, **TOL)
    assert not shared.training and not snapshot.training  # model.train() did not reach them
    assert all(not p.requires_grad for p in shared.parameters())


def test_it_is_eval_only_and_never_records_a_graph():
    model = _compressed("deepfm", "afm_emb")
    fast = optimize_for_inference(model)
    with pytest.raises(RuntimeError, match="eval-only"):
        fast.train()
    with pytest.raises(RuntimeError, match="no gradients"):
        fast.requires_grad_()
    fast.eval().requires_grad_(False)  # allowed: nothing changes
    cat, num = _batch()
    with torch.enable_grad():
        out = fast(cat, num.requires_grad_())
    assert out.grad_fn is None and not out.requires_grad


def test_bad_inputs_and_unknown_models_get_clear_errors():
    fast = optimize_for_inference(_compressed("nfm", "baseline"))
    cat, num = _batch()
    with pytest.raises(ValueError, match=r"categorical must be \[batch, 4\]"):
        fast(cat[:, :3], num)
    with pytest.raises(ValueError, match=r"numeric must be \[batch, 2\]"):
        fast(cat, num[:5])
    with pytest.raises(TypeError, match="int64"):
        fast(cat.float(), num)

    class MyDeepFM(DeepFM):
        pass

    with pytest.raises(TypeError, match="no inference form for MyDeepFM"):
        optimize_for_inference(MyDeepFM(SCHEMA, **HPARAMS))


# --------------------------------------------------------------------------- the parts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_gathered_lookup_of_any_row_size_and_layout_equals_numpy_indexing(dtype, width):
    """Small rows are gathered as single words, others row by row, strided tables as they are."""
    emb = FieldEmbedding(["a", "b", "c"], [10, 20, 30], embedding_dim=width, init_std=1.0).to(dtype)
    with torch.no_grad():  # a table whose rows are not contiguous, and one that is a slice
        emb.b.weight = nn.Parameter(torch.randn(width, 20, dtype=dtype).t())
        emb.c.weight = nn.Parameter(torch.randn(31 * width + 1, dtype=dtype)[1:].view(31, width)[1:])
    cat = torch.stack([torch.randint(0, v, (50,)) for v in (10, 20, 30)], 1)
    lookup = build_lookup(emb.tables(), Tensors())
    assert isinstance(lookup, GatheredLookup)
    out = lookup(cat.t().contiguous())
    scripted = torch.jit.script(lookup)(cat.t().contiguous())  # row by row, without the word trick
    assert out.dtype == dtype and out.is_contiguous() and out.shape == (50, 3, width)
    for i, table in enumerate(emb.tables()):
        expected = table.weight.detach().numpy()[cat[:, i].numpy()]
        np.testing.assert_array_equal(out[:, i].numpy(), expected)
        np.testing.assert_array_equal(scripted[:, i].numpy(), expected)


def test_tables_that_must_be_called_are_called():
    """max_norm renormalises rows on lookup, TT tables compute theirs, a mix of kinds projects
    field by field: each gives what calling every table gives."""
    torch.manual_seed(0)
    emb = FieldEmbedding(["a", "b", "c"], [10, 12, 8], embedding_dim=4, init_std=3.0)
    cat = torch.stack([torch.randint(0, v, (30,)) for v in (10, 12, 8)], 1)
    emb.a = nn.Embedding(10, 4, max_norm=1.0)
    emb.b = TTEmbedding(12, 4, tt_rank=2)
    emb.c = LowRankEmbedding(8, 4, 4)  # k = t: same width as the plain tables
    reference = copy.deepcopy(emb)
    lookup, projection = build_lookup(emb.tables(), Tensors()), build_projection(emb.tables(), Tensors())
    assert isinstance(lookup, CalledFields) and isinstance(projection, CalledFields)
    with torch.inference_mode():
        out = projection(lookup(cat.t().contiguous()))
        expected = torch.stack([reference.a(cat[:, 0]), reference.b(cat[:, 1]), reference.c(cat[:, 2])], 1)
    torch.testing.assert_close(out, expected, **TOL)


def test_batched_projection_equals_each_projection_with_and_without_biases():
    tables = [LowRankEmbedding(v, 6, 3) for v in VOCAB]
    tables[2] = LowRankEmbedding(VOCAB[2], 6, 3, projection_bias=False)
    codes = torch.randn(25, len(VOCAB), 3)
    with torch.no_grad():
        loop = torch.stack([t.project(codes[:, i]) for i, t in enumerate(tables)], 1)
        no_bias_loop = torch.stack([codes[:, i] @ t.projection.weight.T for i, t in enumerate(tables)], 1)
    projection = build_projection(tables, Tensors())
    assert isinstance(projection, BatchedProjection)
    out = projection(codes)
    assert out.is_contiguous() and out.shape == (25, len(VOCAB), 6)
    torch.testing.assert_close(out, loop, **TOL)
    unbiased = build_projection([LowRankEmbedding(v, 6, 3, projection_bias=False) for v in VOCAB], Tensors())
    assert not unbiased.has_bias
    for i, field in enumerate(unbiased.fields):
        field.weight.copy_(tables[i].projection.weight.detach())
    torch.testing.assert_close(unbiased(codes), no_bias_loop, **TOL)


def test_factored_linear_relu_in_place_gives_the_module_outputs():
    layer = LowRankLinear(7, 5, 3, relu=True)
    fast = build_linear(layer, Tensors())
    assert isinstance(fast, FactoredLinear)
    x = torch.randn(11, 7)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), layer(x), rtol=0, atol=0)
        h = layer.first(x)
    assert (h < 0).any()  # the ReLU had something to do


# --------------------------------------------------------------------------- fused gather, code space


def test_fused_lookup_equals_numpy_indexing_with_padding_and_rejects_foreign_ids():
    g = torch.Generator().manual_seed(3)
    sizes, k = [5, 3, 8], 2
    rows = [torch.randn(v, k, generator=g) for v in sizes]
    lr = [torch.randn(v, 1, generator=g) for v in sizes]
    cat = torch.stack([torch.randint(0, v, (13,), generator=g) for v in sizes], dim=1)
    for multiple in (1, 4, 8):
        lookup = FusedLookup(rows, lr, row_multiple=multiple)
        assert lookup.table.shape == (sum(sizes), -(-(k + 1) // multiple) * multiple)
        codes, logit = lookup(cat)
        c = cat.numpy()
        expect_codes = np.stack([rows[i].numpy()[c[:, i]] for i in range(3)], axis=1)
        expect_lr = sum(lr[i].numpy()[c[:, i], 0] for i in range(3))
        np.testing.assert_array_equal(codes.numpy(), expect_codes)
        np.testing.assert_allclose(logit.numpy(), expect_lr, rtol=1e-6)
    bad = cat.clone()
    bad[4, 1] = 3  # field 1 has 3 rows: id 3 would read field 2's first row
    with pytest.raises(IndexError, match="id 3 of field 1 is outside its vocabulary of 3 rows"):
        lookup(bad)
    with pytest.raises(ValueError, match="one width"):
        FusedLookup([rows[0], torch.randn(3, 4)], lr[:2])


@pytest.mark.parametrize("name,structure", [("deepfm", "baseline"), ("dcn", "afm_emb"), ("autoint", "afm_mlp"),
                                            ("deepfm", "afm_emb"), ("nfm", "afm_emb")])
def test_fuse_all_fuses_any_row_width_and_gives_the_same_outputs(name, structure):
    """``fuse="all"`` (exported graphs) fuses a baseline's ``d + 1``-wide rows too (word-sized rows only
    with ``fuse=True``); a trace takes the functional forms (no ``out=``): same outputs either way."""
    model = _compressed(name, structure)
    fused = optimize_for_inference(model, copy=True, fuse="all")
    assert isinstance(fused.lookup, FusedLookup)
    assert fused.lookup.table.shape == (sum(VOCAB), fused.lookup.width + 1)  # unpadded: as many numbers as the tables
    assert isinstance(optimize_for_inference(model, copy=True).lookup, FusedLookup if structure == "afm_emb" else SeparateLookups)
    cat, num = _batch(rows=21)
    expected = _plain(model, cat, num)
    torch.testing.assert_close(fused(cat, num), expected, **TOL)
    for form in (fused, optimize_for_inference(model, fuse=False)):  # the traced forms: fused, and a Gather per field
        traced = torch.jit.trace(form, (cat[:2], num[:2]), check_trace=False)
        for rows in (21, 1):
            torch.testing.assert_close(traced(cat[:rows], num[:rows]), expected[:rows], **TOL)
    with pytest.raises(ValueError, match="fuse must be True, False or 'all', got 'some'"):
        optimize_for_inference(model, fuse="some")


def test_fuse_without_copy_snapshots_only_the_tables():
    model = _compressed("deepfm", "afm_emb")
    fused = optimize_for_inference(model, fuse=True)
    cat, num = _batch()
    with torch.no_grad():
        model.output.bias.add_(1.0)  # shared: seen
        seen = _plain(model, cat, num)
        torch.testing.assert_close(fused(cat, num), seen, **TOL)
        for table in model.embeddings.tables():  # copied into the fused table: not seen
            table.table.weight.mul_(2.0)
    assert not torch.allclose(_plain(model, cat, num), seen, atol=1e-3)
    torch.testing.assert_close(fused(cat, num), seen, **TOL)
    assert isinstance(optimize_for_inference(model).lookup, SeparateLookups)  # default: no copy, no fuse
    assert isinstance(optimize_for_inference(model, copy=True, fuse=False).lookup, SeparateLookups)


def _numpy_bi_interaction(codes, weights, biases):
    """NFM's bi-interaction of the projected embeddings, in numpy: ``[B, d]``."""
    emb = np.stack([c @ w.T + b for c, w, b in zip(codes, weights, biases)], axis=1)  # [B, F, d]
    return 0.5 * (emb.sum(1) ** 2 - (emb ** 2).sum(1))


@pytest.mark.parametrize("widths", [[2, 2, 2], [1, 3, 2, 4]])
def test_code_space_interaction_equals_numpy_on_the_embeddings(widths):
    from lightning_afm.inference.code_space import CodeSpaceInteraction

    rng = np.random.default_rng(5)
    d, batch = 6, 11
    weights = [rng.standard_normal((d, k)).astype(np.float64) for k in widths]
    biases = [rng.standard_normal(d) for _ in widths]
    codes = [rng.standard_normal((batch, k)) for k in widths]
    expect = _numpy_bi_interaction(codes, weights, biases)
    flat = torch.from_numpy(np.concatenate(codes, axis=1))
    tw, tb = [torch.from_numpy(w) for w in weights], [torch.from_numpy(b) for b in biases]
    bi = CodeSpaceInteraction(tw, tb, reduce=False)(flat)
    fm = CodeSpaceInteraction(tw, tb, reduce=True)(flat)
    np.testing.assert_allclose(bi.numpy(), expect, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fm.numpy(), expect.sum(1), rtol=1e-10, atol=1e-10)
    if len(set(widths)) == 1:  # stacked [B, F, k] codes read the same
        stacked = flat.view(batch, len(widths), widths[0])
        np.testing.assert_allclose(CodeSpaceInteraction(tw, tb, True)(stacked).numpy(), expect.sum(1), rtol=1e-10)
    # the export forms (one product; the FM's with the fields' Gram blocks), as a trace records them
    for reduce, expected in ((False, expect), (True, expect.sum(1))):
        traced = torch.jit.trace(CodeSpaceInteraction(tw, tb, reduce=reduce), flat[:3])
        np.testing.assert_allclose(traced(flat).numpy(), expected, rtol=1e-10, atol=1e-10)


def test_inference_block_relu_in_place_only_on_fresh_outputs():
    from lightning_afm.inference.dense import InferenceBlock

    x = torch.randn(5, 4)
    kept = x.clone()
    through = InferenceBlock(nn.Identity(), None)  # returns its input: the ReLU must not overwrite it
    torch.testing.assert_close(through(x), kept.relu())
    torch.testing.assert_close(x, kept)
    linear = nn.Linear(4, 3)
    block = InferenceBlock(linear, None)
    assert block.in_place and not through.in_place
    torch.testing.assert_close(block(x), linear(x).relu())
    # after_linear takes a fresh tensor (a Linear's output, as FiBiNet's fold passes) and may reuse it
    h = linear(x).detach()
    expected = h.relu()
    torch.testing.assert_close(block.after_linear(h), expected)
