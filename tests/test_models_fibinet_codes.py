"""FiBiNet's inference form on low-rank codes gives what its bilinear layers and MLP give.

With factored tables (``v_i = U_i c_i + b_i``) and ``(k+1)^2 < d``, the inference form folds
both bilinear branches and the first MLP Linear onto products of the codes
(:mod:`lightning_afm.inference.fibinet`). The reference here is the training model's own
forward (the bilinear layers, the MLP) in eval mode, in float64.
"""

from __future__ import annotations

import pytest
import torch

from lightning_afm.compress import LowRankEmbedding, LowRankLinear
from lightning_afm.data.schema import Schema
from lightning_afm.models.fibinet import FiBiNet
from lightning_afm.inference import optimize_for_inference
from lightning_afm.inference.fibinet import FiBiNetHead, FoldedFiBiNetHead, fold_pays

VOCAB = [9, 7, 5, 11, 6]


def _factored_fibinet(
    code_dim: int = 2,
    embedding_dim: int = 16,
    numeric: int = 2,
    bias: bool = True,
    seed: int = 0,
    **hparams,
) -> FiBiNet:
    torch.manual_seed(seed)
    model = FiBiNet(
        Schema.from_vocab_sizes(VOCAB, numeric=numeric), embedding_dim=embedding_dim, mlp_hidden=[8, 6], **hparams
    ).double()
    for name, rows in zip(model.embeddings.module_names, VOCAB):
        table = LowRankEmbedding(rows, embedding_dim, code_dim, projection_bias=bias).double()
        torch.nn.init.normal_(table.table.weight)
        if bias:
            torch.nn.init.normal_(table.projection.bias)
        setattr(model.embeddings, name, table)
    with torch.no_grad():  # SENET weights away from ReLU's zero, so every term matters
        for p in model.senet.parameters():
            p.abs_()
    return model.eval()


def _batch(numeric: int = 2, rows: int = 13):
    g = torch.Generator().manual_seed(1)
    cat = torch.stack([torch.randint(0, v, (rows,), generator=g) for v in VOCAB], dim=1)
    return cat, torch.randn(rows, numeric, generator=g, dtype=torch.float64)


def _plain(model: FiBiNet, cat, num) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(cat, num)


def _folded(model: FiBiNet):
    fast = optimize_for_inference(model)
    assert isinstance(fast.deep, FoldedFiBiNetHead)
    return fast


@pytest.mark.parametrize("bilinear_type", ["field_interaction", "field_each", "field_all"])
@pytest.mark.parametrize("bias", [True, False], ids=["afm-bias", "svd-no-bias"])
@pytest.mark.parametrize("numeric", [2, 0])
def test_folded_path_equals_the_bilinear_layers(bilinear_type, bias, numeric):
    model = _factored_fibinet(bias=bias, numeric=numeric, bilinear_type=bilinear_type)
    cat, num = _batch(numeric)
    fast = _folded(model)
    torch.testing.assert_close(fast(cat, num), _plain(model, cat, num), rtol=1e-10, atol=1e-10)
    scripted = torch.jit.script(fast)
    torch.testing.assert_close(scripted(cat, num), _plain(model, cat, num), rtol=1e-10, atol=1e-10)


def test_folded_path_with_batch_norm_and_inference_mode():
    model = _factored_fibinet(batch_norm=True, dropout=0.3)
    cat, num = _batch()
    model.train()
    with torch.no_grad():
        model(cat, num)  # batch statistics move the running ones
    fast = _folded(model)
    with torch.inference_mode():
        out = fast(cat, num)
    torch.testing.assert_close(out, _plain(model, cat, num), rtol=1e-10, atol=1e-10)
    assert out.shape == (13,)


def test_folded_input_is_narrower_and_tracks_the_current_weights():
    model = _factored_fibinet()
    cat, num = _batch()
    fast = _folded(model)
    with torch.no_grad():
        codes, _ = fast.lookup(cat)
        x, weight, bias = fast.deep.code_mlp_input(codes, fast.project(codes), num)
        pairs, fields, k = 10, 5, 2
        assert x.shape == (13, pairs * (k + 1) ** 2 + pairs * k * k + fields * k + 2)
        assert x.shape[1] < model.mlp[0].linear.in_features  # 132 < 2 * 10 * 16 + 2
        assert weight.shape == (8, x.shape[1]) and bias.shape == (8,)
        model.bilinear.weight.mul_(-2.0)  # nothing derived is kept: the next call folds the new weights
        model.embeddings.tables()[0].projection.bias.add_(1.0)
    torch.testing.assert_close(fast(cat, num), _plain(model, cat, num), rtol=1e-10, atol=1e-10)


def test_fold_only_where_it_is_narrower():
    assert fold_pays(16, 2) and not fold_pays(16, 3) and not fold_pays(50, 8)  # Criteo yes, Avazu no
    wide = _factored_fibinet(code_dim=4)
    cat, num = _batch()
    fast = optimize_for_inference(wide)
    assert isinstance(fast.deep, FiBiNetHead)
    torch.testing.assert_close(fast(cat, num), _plain(wide, cat, num), rtol=1e-10, atol=1e-10)
    plain = FiBiNet(Schema.from_vocab_sizes(VOCAB, numeric=2), embedding_dim=16, mlp_hidden=[8])
    assert isinstance(optimize_for_inference(plain).deep, FiBiNetHead)


def test_a_factored_first_linear_keeps_the_bilinear_path():
    model = _factored_fibinet()
    first = model.mlp[0].linear
    model.mlp[0].linear = LowRankLinear(first.in_features, first.out_features, rank=3).double()
    fast = optimize_for_inference(model)
    assert isinstance(fast.deep, FiBiNetHead)
    cat, num = _batch()
    torch.testing.assert_close(fast(cat, num), _plain(model, cat, num), rtol=1e-10, atol=1e-10)


def test_a_projection_with_its_own_forward_keeps_the_bilinear_path():
    class Doubled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = _factored_fibinet()
    for table in model.embeddings.tables():
        doubled = Doubled(2, 16).double()
        doubled.load_state_dict(table.projection.state_dict())
        table.projection = doubled
    fast = optimize_for_inference(model)
    assert isinstance(fast.deep, FiBiNetHead)
    cat, num = _batch()
    torch.testing.assert_close(fast(cat, num), _plain(model, cat, num), rtol=1e-10, atol=1e-10)
    assert not fast.deep.left_from_codes  # the projection's own forward must run


# --------------------------------------------------------------------------- unfolded, left products on the codes


@pytest.mark.parametrize("bilinear_type", ["field_interaction", "field_each", "field_all"])
@pytest.mark.parametrize("bias", [True, False], ids=["afm-bias", "svd-no-bias"])
@pytest.mark.parametrize("numeric", [2, 0])
def test_unfolded_left_products_from_the_codes_equal_the_bilinear_layers(bilinear_type, bias, numeric):
    """Where the fold does not pay (k = 4 at d = 16, as k = 8 at Avazu's d = 50)."""
    model = _factored_fibinet(code_dim=4, bias=bias, numeric=numeric, bilinear_type=bilinear_type)
    cat, num = _batch(numeric)
    fast = optimize_for_inference(model)
    assert isinstance(fast.deep, FiBiNetHead) and fast.deep.left_from_codes
    with torch.no_grad():  # each layer's left products, one block per left field, as the layer gives them
        codes, _ = fast.lookup(cat)
        emb = fast.project(codes)
        weights = model.senet.field_weights(emb)
        senet_in, senet_blocks, plain_in, plain_blocks = fast.deep.left_factors(codes, emb, emb, weights)
        expected_senet = model.senet_bilinear.left_products(model.senet(emb))
        expected = model.bilinear.left_products(emb)
    assert len(plain_in) == len(expected) == len(VOCAB) - 1
    assert all(a.shape[1] == 5 for a in plain_in)  # the extended codes, k + 1
    for a, b, want in zip(senet_in + plain_in, senet_blocks + plain_blocks, expected_senet + expected):
        torch.testing.assert_close(a.mm(b).view(want.shape), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast(cat, num), _plain(model, cat, num), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.jit.script(fast)(cat, num), _plain(model, cat, num), rtol=1e-10, atol=1e-10)


def test_unfolded_left_products_track_the_current_weights_and_plain_tables_keep_the_layers():
    model = _factored_fibinet(code_dim=4)
    cat, num = _batch()
    fast = optimize_for_inference(model)
    with torch.no_grad():  # nothing derived is kept: the next call reads the new weights
        model.senet_bilinear.weight.mul_(-1.5)
        model.embeddings.tables()[1].projection.weight.add_(0.5)
    torch.testing.assert_close(fast(cat, num), _plain(model, cat, num), rtol=1e-10, atol=1e-10)
    plain = FiBiNet(Schema.from_vocab_sizes(VOCAB, numeric=2), embedding_dim=16, mlp_hidden=[8]).double().eval()
    assert not optimize_for_inference(plain).deep.left_from_codes
