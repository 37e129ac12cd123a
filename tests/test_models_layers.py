"""Shared model layers against independent references (brute force and numpy, float64)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from lightning_afm.inference import Tensors
from lightning_afm.inference.cross import AlignedCross, GatedCrossStep, build_cross
from lightning_afm.inference.projection import CodeColumns
from lightning_afm.inference.fibinet import left_blocks, write_bilinear
from lightning_afm.models.layers import (
    MLP,
    BiInteractionPooling,
    BilinearInteraction,
    CrossNetwork,
    CrossNetworkV2,
    Dropout,
    FactorizationMachine,
    GatedCrossNetwork,
    InteractingLayer,
    LinearLogit,
    SENETLayer,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# -- FM and bi-interaction -------------------------------------------------------------
def test_fm_equals_sum_of_pairwise_dot_products(rng):
    e = rng.normal(size=(5, 7, 4))
    expected = np.array([sum(e[b, i] @ e[b, j] for i, j in itertools.combinations(range(7), 2)) for b in range(5)])
    out = FactorizationMachine()(t64(e))
    assert out.shape == (5,)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_bi_interaction_equals_sum_of_pairwise_products(rng):
    e = rng.normal(size=(3, 6, 5))
    expected = np.stack([sum(e[b, i] * e[b, j] for i, j in itertools.combinations(range(6), 2)) for b in range(3)])
    out = BiInteractionPooling()(t64(e))
    assert out.shape == (3, 5)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    # summed over the embedding dimension it is the FM term
    np.testing.assert_allclose(out.sum(1).numpy(), FactorizationMachine()(t64(e)).numpy(), rtol=1e-12)


# -- cross networks ------------------------------------------------------------------
def test_dcn_cross_network_matches_formula(rng):
    d, layers = 6, 3
    net = CrossNetwork(d, num_layers=layers).double()
    with torch.no_grad():
        net.weight.copy_(t64(rng.normal(size=(layers, d))))
        net.bias.copy_(t64(rng.normal(size=(layers, d))))
    x0 = rng.normal(size=(4, d))
    x = x0.copy()
    w, b = net.weight.detach().numpy(), net.bias.detach().numpy()
    for l in range(layers):  # x_{l+1} = x0 (x_l . w_l) + b_l + x_l, row by row
        x = np.stack([x0[r] * (x[r] @ w[l]) + b[l] + x[r] for r in range(4)])
    np.testing.assert_allclose(net(t64(x0)).detach().numpy(), x, rtol=1e-12)
    assert sum(p.numel() for p in net.parameters()) == 2 * layers * d


def test_dcnv2_matrix_cross_matches_formula(rng):
    d = 5
    net = CrossNetworkV2(d, num_layers=2).double()
    with torch.no_grad():
        for layer in net.layers:
            layer.linear.bias.copy_(t64(rng.normal(size=d)))
    x0 = rng.normal(size=(3, d))
    x = x0.copy()
    for layer in net.layers:
        W, b = layer.linear.weight.detach().numpy(), layer.linear.bias.detach().numpy()
        x = x0 * (x @ W.T + b) + x
    np.testing.assert_allclose(net(t64(x0)).detach().numpy(), x, rtol=1e-12)
    assert sum(p.numel() for p in net.parameters()) == 2 * (d * d + d)


def test_dcnv2_low_rank_mixture_matches_loop_over_experts(rng):
    d, r, e = 5, 2, 3
    net = CrossNetworkV2(d, num_layers=2, low_rank=r, num_experts=e).double()
    with torch.no_grad():
        for layer in net.layers:
            layer.bias.copy_(t64(rng.normal(size=d)))
    x0 = rng.normal(size=(4, d))
    x = x0.copy()
    for layer in net.layers:
        U, V, C = (p.detach().numpy() for p in (layer.U, layer.V, layer.C))
        G, b = layer.gate.weight.detach().numpy(), layer.bias.detach().numpy()
        new = np.zeros_like(x)
        for row in range(4):
            logits = G @ x[row]
            g = np.exp(logits - logits.max())
            g /= g.sum()
            for k in range(e):
                expert = x0[row] * (U[k] @ np.tanh(C[k] @ np.tanh(V[k].T @ x[row])) + b)
                new[row] += g[k] * expert
        x = new + x
    np.testing.assert_allclose(net(t64(x0)).detach().numpy(), x, rtol=1e-10)


def test_gdcn_gated_cross_matches_formula(rng):
    d = 4
    net = GatedCrossNetwork(d, num_layers=2).double()
    c0 = rng.normal(size=(3, d))
    c = c0.copy()
    for layer in net.layers:
        Wc, bc = layer.cross.weight.detach().numpy(), layer.cross.bias.detach().numpy()
        Wg = layer.gate.weight.detach().numpy()
        c = c0 * (c @ Wc.T + bc) * sigmoid(c @ Wg.T) + c
    np.testing.assert_allclose(net(t64(c0)).detach().numpy(), c, rtol=1e-12)
    assert sum(p.numel() for p in net.parameters()) == 2 * (2 * d * d + d)


def _layer_by_layer(net: nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """The cross networks' plain loop: each layer's own ``forward`` at the unpadded width."""
    x = x0
    for layer in net.layers:
        x = layer(x0, x)
    return x


# The aligned inference forms (lightning_afm/inference/cross.py) against the plain loop.
@pytest.mark.parametrize("make", [lambda d: CrossNetworkV2(d, num_layers=3), lambda d: GatedCrossNetwork(d, num_layers=3)])
@pytest.mark.parametrize("d", [5, 16, 29])  # padded to 16, already aligned, padded to 32
def test_aligned_cross_networks_match_the_plain_loop(rng, make, d):
    net = make(d).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(t64(rng.normal(scale=0.5, size=tuple(p.shape))))
    aligned = build_cross(net, Tensors())
    assert isinstance(aligned, AlignedCross)
    for rows in (7, 1):  # any batch size
        x0 = t64(rng.normal(size=(rows, d)))
        out = aligned(x0)
        assert out.shape == (rows, d)
        torch.testing.assert_close(out, _layer_by_layer(net, x0).detach(), rtol=1e-12, atol=1e-12)
    scripted = torch.jit.script(aligned)
    torch.testing.assert_close(scripted(x0), out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [lambda d: CrossNetworkV2(d, num_layers=3), lambda d: GatedCrossNetwork(d, num_layers=3)])
@pytest.mark.parametrize("ranks", [[2, 2, 2], [2, 1, 3]])
def test_the_first_cross_product_read_off_the_codes_equals_the_plain_loop_on_x0(rng, make, ranks):
    d, numeric = 4, 2
    width = len(ranks) * d + numeric  # 14: padded to 16
    net = make(width).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(t64(rng.normal(scale=0.5, size=tuple(p.shape))))
    projections = [t64(rng.normal(size=(d, k))) for k in ranks]
    biases = [t64(rng.normal(size=d)) for _ in ranks]
    aligned = build_cross(net, Tensors(), CodeColumns(projections, biases))
    assert isinstance(aligned, AlignedCross) and aligned.reads_codes
    # rebuilding the [6 + 2, W] weight costs 6 x 4 multiply-adds a column; each row saves 14 - 8 = 6
    assert aligned.fold_min_rows == 4
    scripted = torch.jit.script(aligned)
    for rows in (4, 9, 3, 1):
        codes = [t64(rng.normal(size=(rows, k))) for k in ranks]
        num = t64(rng.normal(size=(rows, numeric)))
        # x_0 by numpy: each field's P_i c_i + p_i, then the numeric fields
        x0 = t64(np.concatenate([c.numpy() @ p.numpy().T + b.numpy() for c, p, b in zip(codes, projections, biases)]
                                + [num.numpy()], axis=1))
        code_input = torch.cat(codes + [num], dim=1)
        expected = _layer_by_layer(net, x0).detach()
        out = aligned(x0, code_input)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(scripted(x0, code_input), expected, rtol=1e-12, atol=1e-12)
        # from fold_min_rows on the first product reads the codes (wrong codes change the output); below, x_0
        misled = aligned(x0, torch.zeros_like(code_input))
        assert torch.allclose(misled, expected) is (rows < aligned.fold_min_rows)
    torch.testing.assert_close(aligned(x0), expected, rtol=1e-12, atol=1e-12)  # no codes: x_0 alone


def test_aligned_cross_networks_follow_the_shared_weights_and_not_a_copy(rng):
    net = CrossNetworkV2(5).double()
    shared, snapshot = build_cross(net, Tensors()), build_cross(net, Tensors(copy=True))
    x0 = t64(rng.normal(size=(4, 5)))
    before = _layer_by_layer(net, x0).detach()
    with torch.no_grad():
        net.layers[0].linear.weight.mul_(-2.0)  # as an optimizer step would, in place
    torch.testing.assert_close(shared(x0), _layer_by_layer(net, x0).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(snapshot(x0), before, rtol=1e-12, atol=1e-12)


def test_aligned_gated_cross_keeps_any_bias_the_linears_have(rng):
    net = GatedCrossNetwork(7, num_layers=2).double()
    for layer in net.layers:  # a gate with a bias, a crossing without one: still plain Linears
        layer.gate = nn.Linear(7, 7).double()
        layer.cross = nn.Linear(7, 7, bias=False).double()
    x0 = t64(rng.normal(size=(4, 7)))
    aligned = build_cross(net, Tensors())
    assert isinstance(aligned, AlignedCross) and isinstance(aligned.steps[0], GatedCrossStep)
    torch.testing.assert_close(aligned(x0), _layer_by_layer(net, x0).detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [lambda d: CrossNetworkV2(d), lambda d: GatedCrossNetwork(d)])
def test_swapped_cross_modules_keep_their_own_forward(make):
    """A Linear replaced by another module (or a subclassed one) is called, not padded around."""

    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    net = make(5)
    layer = net.layers[0]
    name = "linear" if isinstance(net, CrossNetworkV2) else "cross"
    doubled = Doubled(5, 5)
    doubled.load_state_dict(getattr(layer, name).state_dict())
    setattr(layer, name, doubled)
    inference = build_cross(net, Tensors())
    assert not isinstance(inference, AlignedCross)
    x0 = torch.randn(3, 5)
    with torch.no_grad():
        torch.testing.assert_close(inference(x0), net(x0))


# -- attention -------------------------------------------------------------------------
@pytest.mark.parametrize("scaled", [False, True])
def test_interacting_layer_matches_numpy_multi_head_attention(rng, scaled):
    b, f, d, h = 2, 4, 6, 3
    layer = InteractingLayer(d, num_heads=h, residual=True, scaled=scaled).double()
    e = rng.normal(size=(b, f, d))
    Wq, Wk, Wv, Wr = (m.weight.detach().numpy().T for m in (layer.query, layer.key, layer.value, layer.residual))
    q, k, v = e @ Wq, e @ Wk, e @ Wv
    dh = d // h
    out = np.zeros_like(e)
    for head in range(h):
        s = slice(head * dh, (head + 1) * dh)
        logits = q[:, :, s] @ k[:, :, s].transpose(0, 2, 1)
        if scaled:
            logits = logits / np.sqrt(dh)
        a = np.exp(logits - logits.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        out[:, :, s] = a @ v[:, :, s]
    expected = np.maximum(out + e @ Wr, 0.0)
    got = layer(t64(e))
    assert got.shape == (b, f, d)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_interacting_layer_residual_carries_input_when_attention_is_silenced(rng):
    layer = InteractingLayer(4, num_heads=2, residual=True).double()
    with torch.no_grad():
        layer.value.weight.zero_()
        layer.residual.weight.copy_(torch.eye(4, dtype=torch.float64))
    e = t64(rng.normal(size=(3, 5, 4)))
    torch.testing.assert_close(layer(e), torch.relu(e))
    no_res = InteractingLayer(4, num_heads=2, residual=False)
    assert no_res.residual is None and sum(p.numel() for p in no_res.parameters()) == 3 * 16
    with pytest.raises(ValueError, match="multiple of num_heads"):
        InteractingLayer(6, num_heads=4)


# -- SENET and bilinear -------------------------------------------------------------------
def test_senet_hand_checked_case():
    layer = SENETLayer(num_fields=2, reduction_ratio=1).double()
    with torch.no_grad():
        layer.squeeze_linear.weight.copy_(torch.eye(2, dtype=torch.float64))
        layer.excite_linear.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 2.0]], dtype=torch.float64))
    e = torch.tensor([[[1.0, 3.0], [-2.0, 0.0]]], dtype=torch.float64)
    # z = field means = [2, -1]; relu -> [2, 0]; excite -> [2 + 0, 0] ; relu -> [2, 0]
    expected = torch.tensor([[[2.0, 6.0], [0.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(layer(e), expected)
    assert SENETLayer(26, 3).reduced == 8 and SENETLayer(2, 3).reduced == 1


def test_bilinear_field_all_with_identity_is_pairwise_product(rng):
    layer = BilinearInteraction(3, 2, "field_all").double()
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2, dtype=torch.float64).unsqueeze(0))
    e = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]], dtype=torch.float64)
    expected = torch.tensor([[[3.0, 8.0], [5.0, 12.0], [15.0, 24.0]]], dtype=torch.float64)  # (0,1) (0,2) (1,2)
    torch.testing.assert_close(layer(e), expected)


@pytest.mark.parametrize("kind", ["field_all", "field_each", "field_interaction", "interaction"])
def test_bilinear_types_match_loop_over_pairs(rng, kind):
    f, d = 4, 3
    layer = BilinearInteraction(f, d, kind).double()
    e = rng.normal(size=(2, f, d))
    W = layer.weight.detach().numpy()
    pairs = list(itertools.combinations(range(f), 2))
    expected = np.zeros((2, len(pairs), d))
    for p, (i, j) in enumerate(pairs):
        if layer.bilinear_type == "field_all":
            w = W[0]
        elif layer.bilinear_type == "field_each":
            w = W[i]
        else:
            w = W[p]
        expected[:, p] = (e[:, i] @ w) * e[:, j]
    n_weights = {"field_all": 1, "field_each": f}.get(layer.bilinear_type, len(pairs))
    assert layer.weight.shape == (n_weights, d, d)
    got = layer(t64(e))
    assert got.shape == (2, f * (f - 1) // 2, d)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-12)
    # inference (lightning_afm/inference/fibinet.py) writes it straight into a strided slice of
    # a wider buffer, one product per left field: the same values
    wide = torch.full((2, 1 + len(pairs) * d + 2), -7.0, dtype=torch.float64)
    with torch.no_grad():
        blocks = left_blocks(layer.weight, layer.bilinear_type, f)
        written = write_bilinear([t64(e)[:, i] for i in range(f - 1)], blocks, t64(e), wide[:, 1 : 1 + len(pairs) * d])
    np.testing.assert_allclose(written.view(2, len(pairs), d).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(wide[:, 1 : 1 + len(pairs) * d].numpy(), expected.reshape(2, -1), rtol=1e-12)
    assert (wide[:, 0] == -7).all() and (wide[:, -2:] == -7).all()
    # gradients: d/dW of sum(p_ij * g_ij) against the loop
    g = rng.normal(size=expected.shape)
    (layer(t64(e)) * t64(g)).sum().backward()
    grad = np.zeros_like(W)
    for p, (i, j) in enumerate(pairs):
        k = {"field_all": 0, "field_each": i}.get(layer.bilinear_type, p)
        grad[k] += np.einsum("bd,be->de", e[:, i], g[:, p] * e[:, j])
    np.testing.assert_allclose(layer.weight.grad.numpy(), grad, rtol=1e-10)


def test_bilinear_rejects_unknown_type():
    with pytest.raises(ValueError, match="bilinear_type"):
        BilinearInteraction(3, 2, "field_some")


# -- MLP, dropout, LR ---------------------------------------------------------------------
def test_mlp_batch_norm_toggle():
    plain, normed = MLP(10, [8, 6]), MLP(10, [8, 6], batch_norm=True)
    assert all(block.norm is None for block in plain)
    assert all(isinstance(block.norm, nn.BatchNorm1d) for block in normed)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(normed) - count(plain) == 2 * (8 + 6)  # a scale and a shift per unit
    assert isinstance(plain[1].linear, nn.Linear) and plain.out_features == 6
    # in training mode the normalised pre-activations have zero mean per unit
    seen = {}
    normed[0].norm.register_forward_hook(lambda m, i, o: seen.update(out=o))
    normed.train()(torch.randn(64, 10) * 5 + 3)
    torch.testing.assert_close(seen["out"].mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="hidden"):
        MLP(10, [])


def test_dropout_keeps_distribution_and_is_an_nn_dropout():
    torch.manual_seed(0)
    d = Dropout(0.25)
    assert isinstance(d, nn.Dropout)
    y = d.train()(torch.ones(200_000))
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    x = torch.randn(5)
    assert torch.equal(d.eval()(x), x)
    d.train().p = 0.0  # what the embedding finetune does
    assert torch.equal(d(x), x)


def test_linear_logit_matches_manual_sum(rng):
    lr = LinearLogit(["a", "b"], [4, 6], num_numeric=2).double()
    with torch.no_grad():
        for table in lr.tables():
            table.weight.copy_(t64(rng.normal(size=tuple(table.weight.shape))))
        lr.numeric.bias.fill_(0.5)
    cat = torch.tensor([[1, 5], [3, 0]])
    num = t64(rng.random((2, 2)))
    wa, wb = lr.a.weight.detach().numpy()[:, 0], lr.b.weight.detach().numpy()[:, 0]
    v = lr.numeric.weight.detach().numpy()[0]
    expected = np.array([wa[1] + wb[5], wa[3] + wb[0]]) + num.numpy() @ v + 0.5
    np.testing.assert_allclose(lr(cat, num).detach().numpy(), expected, rtol=1e-12)
    assert lr.lookup(cat).shape == (2, 2)
    no_numeric = LinearLogit(["a"], [4], num_numeric=0)
    assert no_numeric.numeric is None and sum(p.numel() for p in no_numeric.parameters()) == 4
