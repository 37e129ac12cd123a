"""AFM and SVD factors against exact identities and independent numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_afm.compress import (
    LowRankEmbedding,
    LowRankLinear,
    OutputCovariance,
    afm_embedding_factors,
    afm_factors,
    explained_variance,
    kept_variance,
    svd_embedding_factors,
    svd_factors,
)


def _output_stats(y: torch.Tensor):
    metric = OutputCovariance(y.shape[-1])
    for chunk in y.split(97):
        metric.update(chunk)
    return metric.compute()


def _layer_and_data(m=12, n=10, rows=2000, dtype=torch.float32, seed=0, bias_scale=1.0):
    torch.manual_seed(seed)
    layer = nn.Linear(n, m).to(dtype)
    with torch.no_grad():
        layer.bias.mul_(bias_scale)
    # non-negative, correlated inputs, like the post-ReLU activations an MLP layer reads
    x = torch.relu(torch.randn(rows, n) @ torch.randn(n, n) * 0.5 + 0.3).to(dtype)
    with torch.no_grad():
        y = layer(x)
    return layer, x, y


def test_afm_at_full_rank_without_relu_reproduces_the_layer_float32():
    layer, x, y = _layer_and_data(m=12, n=16, dtype=torch.float32)
    stats = _output_stats(y)
    factors = afm_factors(layer.weight, layer.bias, stats.mean, stats.cov, rank=12)
    assert all(f.dtype == torch.float32 for f in factors)
    compressed = LowRankLinear.from_factors(factors, relu=False)
    with torch.no_grad():
        err = (compressed(x) - y).abs().max().item()
    assert err <= 1e-4


def test_afm_factors_span_the_numpy_principal_subspace():
    layer, _, y = _layer_and_data(m=6, n=5, dtype=torch.float64, seed=3)
    stats = _output_stats(y)
    k = 3
    f = afm_factors(layer.weight, layer.bias, stats.mean, stats.cov, rank=k)
    # independent reference: numpy covariance and eigendecomposition, sorted descending
    rows = y.numpy()
    mu = rows.mean(0)
    values, vectors = np.linalg.eigh(np.cov(rows, rowvar=False, bias=True))
    order = np.argsort(values)[::-1]
    u = vectors[:, order[:k]]
    assert values[order[k - 1]] - values[order[k]] > 1e-3  # a gap, so the subspace is unique
    proj = u @ u.T  # sign-free: compare projectors
    w2 = f.second_weight.numpy()
    np.testing.assert_allclose(w2 @ w2.T, proj, atol=1e-9)
    np.testing.assert_allclose(w2.T @ w2, np.eye(k), atol=1e-12)
    np.testing.assert_allclose(w2 @ f.first_weight.numpy(), proj @ layer.weight.detach().numpy(), atol=1e-9)
    np.testing.assert_allclose(w2 @ f.first_bias.numpy(), proj @ layer.bias.detach().numpy(), atol=1e-9)
    np.testing.assert_allclose(f.second_bias.numpy(), mu - proj @ mu, atol=1e-9)
    # the orientation convention: every kept component has a non-negative mean coefficient
    assert np.all(w2.T @ mu >= 0)


def test_afm_without_bias_and_low_rank_is_the_pca_projection():
    torch.manual_seed(1)
    layer = nn.Linear(8, 7, bias=False).double()
    x = torch.randn(500, 8, dtype=torch.float64) + 2
    with torch.no_grad():
        y = layer(x)
    stats = _output_stats(y)
    f = afm_factors(layer.weight, None, stats.mean, stats.cov, rank=2)
    assert torch.equal(f.first_bias, torch.zeros(2, dtype=torch.float64))
    u = f.second_weight
    with torch.no_grad():
        out = LowRankLinear.from_factors(f)(x)
    expected = (y - stats.mean) @ u @ u.T + stats.mean
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_svd_full_rank_reproduces_w_and_rank_k_is_numpys_best_approximation():
    torch.manual_seed(0)
    w = torch.randn(9, 6, dtype=torch.float64)
    b = torch.randn(9, dtype=torch.float64)
    full = svd_factors(w, b, 6)
    torch.testing.assert_close(full.second_weight @ full.first_weight, w, rtol=0, atol=1e-12)
    assert full.first_bias is None and torch.equal(full.second_bias, b)
    k = 2
    f = svd_factors(w, b, k)
    u, s, vt = np.linalg.svd(w.numpy(), full_matrices=False)
    best = (u[:, :k] * s[:k]) @ vt[:k]
    np.testing.assert_allclose((f.second_weight @ f.first_weight).numpy(), best, atol=1e-12)
    # balanced split: both factors carry S^(1/2)
    np.testing.assert_allclose(np.linalg.norm(f.first_weight.numpy(), axis=1), np.sqrt(s[:k]), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(f.second_weight.numpy(), axis=0), np.sqrt(s[:k]), atol=1e-12)


def test_afm_embedding_at_full_rank_reproduces_lookups_and_low_rank_projects():
    torch.manual_seed(0)
    table = nn.Embedding(30, 8)
    idx = torch.randint(0, 30, (400,)) ** 1  # every row id may repeat
    with torch.no_grad():
        looked = table(idx)
    stats = _output_stats(looked)
    full = LowRankEmbedding.from_factors(afm_embedding_factors(table.weight, stats.mean, stats.cov, 8))
    with torch.no_grad():
        assert (full(idx) - looked).abs().max().item() <= 1e-5
        assert full(idx).shape == (400, 8) and full.codes(idx).shape == (400, 8)
    # rank 3 in float64: row i becomes U U^T (D_i - mu) + mu, against a numpy eigenvector basis
    d = table.weight.detach().double()
    stats64 = _output_stats(d[idx])
    f = afm_embedding_factors(d, stats64.mean, stats64.cov, 3)
    values, vectors = np.linalg.eigh(stats64.cov.numpy())
    u = vectors[:, np.argsort(values)[::-1][:3]]
    mu = stats64.mean.numpy()
    expected = (d.numpy() - mu) @ u @ u.T + mu
    rebuilt = f.table.numpy() @ f.projection_weight.numpy().T + f.projection_bias.numpy()
    np.testing.assert_allclose(rebuilt, expected, atol=1e-10)
    assert f.table.shape == (30, 3) and f.projection_weight.shape == (8, 3)


def test_svd_embedding_full_rank_and_best_rank_k():
    torch.manual_seed(0)
    d = torch.randn(50, 6, dtype=torch.float64)
    full = svd_embedding_factors(d, 6, chunk_rows=7)  # several chunks for the Gram matrix
    torch.testing.assert_close(full.table @ full.projection_weight.T, d, rtol=0, atol=1e-10)
    assert full.projection_bias is None
    f = svd_embedding_factors(d, 2)
    u, s, vt = np.linalg.svd(d.numpy(), full_matrices=False)
    np.testing.assert_allclose((f.table @ f.projection_weight.T).numpy(), (u[:, :2] * s[:2]) @ vt[:2], atol=1e-10)


def test_explained_variance_hand_computed():
    # eigenvalues 6, 3, 0.5, 0.5 (total 10), hidden behind a random rotation:
    # cumulative shares 0.6, 0.9, 0.95, 1.0 -> 90 % needs 2, 95 % needs 3, 99 % needs 4
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    cov = q @ torch.diag(torch.tensor([3.0, 0.5, 6.0, 0.5], dtype=torch.float64)) @ q.T
    spectrum = explained_variance(cov)
    torch.testing.assert_close(spectrum.eigenvalues, torch.tensor([6.0, 3.0, 0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(spectrum.cumulative_ratio, torch.tensor([0.6, 0.9, 0.95, 1.0], dtype=torch.float64))
    assert spectrum.components == {0.9: 2, 0.95: 3, 0.99: 4}
    assert spectrum.to_dict()["components_95"] == 3
    assert math.isclose(spectrum.to_dict()["total_variance"], 10.0)
    assert math.isclose(kept_variance(cov, 1), 0.6) and math.isclose(kept_variance(cov, 4), 1.0)
    assert explained_variance(cov, thresholds=(0.5,)).components == {0.5: 1}


def test_constant_outputs_give_no_nan_anywhere():
    layer = nn.Linear(5, 4)
    with torch.no_grad():
        layer.weight[1] = 0  # unit 1 outputs its bias whatever the input: a dead unit
    x = torch.randn(300, 5)
    with torch.no_grad():
        y = layer(x)
    stats = _output_stats(y)
    for relu in (False, True):
        f = afm_factors(layer.weight, layer.bias, stats.mean, stats.cov, rank=4, relu=relu)
        assert all(torch.isfinite(t).all() for t in f)
        with torch.no_grad():
            assert torch.isfinite(LowRankLinear.from_factors(f, relu=relu)(x)).all()
    zero = torch.zeros(3, 3)
    spectrum = explained_variance(zero)
    assert torch.isfinite(spectrum.cumulative_ratio).all() and spectrum.components[0.9] == 0
    assert kept_variance(zero, 1) == 1.0
    f = afm_embedding_factors(torch.ones(4, 3), torch.ones(3), zero, 2)  # every row identical
    assert all(torch.isfinite(t).all() for t in f)


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / (ref - ref.mean(0)).norm()).item()


def test_relu_between_factors_stays_close_on_the_statistics_data_and_the_sign_fix_matters():
    # A layer whose outputs have a clear mean offset (bias scaled up), as pre-activations of
    # a trained MLP layer do; rank k < m.
    layer, x, y = _layer_and_data(m=24, n=20, rows=4000, dtype=torch.float64, seed=5, bias_scale=6.0)
    stats = _output_stats(y)
    k = 8
    args = (layer.weight, layer.bias, stats.mean, stats.cov, k)
    with torch.no_grad():
        ref = LowRankLinear.from_factors(afm_factors(*args, relu=False))(x)

        def out(factors):
            return LowRankLinear.from_factors(factors, relu=True)(x)

        shifted = afm_factors(*args, relu=True, relu_init="shift")
        signed = afm_factors(*args, relu=True, relu_init="sign")
        # the opposite orientation: same function without a ReLU, wrong one with it
        flipped = signed._replace(
            first_weight=-signed.first_weight, first_bias=-signed.first_bias, second_weight=-signed.second_weight
        )
        with_flip = _relative_error(out(flipped), ref)
        torch.testing.assert_close(
            LowRankLinear.from_factors(flipped)(x), ref, rtol=0, atol=1e-9
        )  # no ReLU: orientation is irrelevant
        err_shift = _relative_error(out(shifted), ref)
        err_sign = _relative_error(out(signed), ref)

    # Tolerance for the bias shift. Each kept coefficient z_j = u_j^T y has mean a_j >= 0 and
    # variance lambda_j; the shift moves it so that a_j - 3 sqrt(lambda_j) >= 0, and the ReLU
    # then only removes E[(z_j)_-^2] <= lambda_j * E[(Z + 3)_-^2] for Gaussian-like z_j
    # (z_j sums 20 inputs), where E[(Z + 3)_-^2] = 10 Phi(-3) - 3 phi(3) = 2.0e-4. Summed over
    # the components (kept variance <= total variance) the relative squared error is <= 2e-4,
    # i.e. a relative error <= 0.014; 0.03 leaves a 4.5x margin in squared error for the
    # skew of the ReLU-ed inputs.
    gauss_tail = 10 * 0.5 * math.erfc(3 / math.sqrt(2)) - 3 * math.exp(-4.5) / math.sqrt(2 * math.pi)
    assert abs(gauss_tail - 2.0e-4) < 1e-5
    assert err_shift <= 0.03
    # Sign fix alone: each component loses its part below 0, the flipped orientation loses the
    # part above 0 instead, which with a_j >= 0 is the bigger one (here the components have
    # a_j / sqrt(lambda_j) between 0 and 1.5, so the sign fix alone still clips a lot: that is
    # why the default adds the shift). Measured: shift 0.02, sign 0.46, flipped 1.28.
    assert err_sign < with_flip / 2, (err_sign, with_flip)
    assert with_flip > 1.0  # wrong signs: further from the projection than its own spread
    assert err_shift < err_sign / 10


def test_relu_init_shift_is_exact_without_relu_and_rejects_bad_options():
    layer, x, y = _layer_and_data(m=6, n=6, dtype=torch.float64)
    stats = _output_stats(y)
    f = afm_factors(layer.weight, layer.bias, stats.mean, stats.cov, 6, relu=True, relu_init="shift")
    with torch.no_grad():
        # the shift cancels through the linear path: without the ReLU it is still exact
        torch.testing.assert_close(LowRankLinear.from_factors(f, relu=False)(x), y, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="relu_init"):
        afm_factors(layer.weight, layer.bias, stats.mean, stats.cov, 3, relu=True, relu_init="flip")


@pytest.mark.parametrize("rank", [0, -1, 7])
def test_rank_out_of_range(rank):
    w, mean, cov = torch.randn(8, 6), torch.zeros(8), torch.eye(8)
    with pytest.raises(ValueError, match=rf"rank {rank} is out of range.*between 1 and 6"):
        afm_factors(w, None, mean, cov, rank)
    with pytest.raises(ValueError, match=r"between 1 and 6"):
        svd_factors(w, None, rank)
    if rank != 7:
        with pytest.raises(ValueError, match=r"between 1 and 6"):
            afm_embedding_factors(torch.randn(10, 6), torch.zeros(6), torch.eye(6), rank)
    with pytest.raises(ValueError, match=r"between 1 and 6"):
        svd_embedding_factors(torch.randn(10, 6), rank if rank != 7 else 9)


def test_bad_shapes_and_values_raise():
    w = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"square with shape \(4, 4\)"):
        afm_factors(w, None, torch.zeros(4), torch.eye(3), 2)
    with pytest.raises(ValueError, match=r"square with shape \(4, 4\)"):
        afm_factors(w, None, torch.zeros(4), torch.zeros(4, 5), 2)
    with pytest.raises(ValueError, match=r"mean .* shape \(4,\)"):
        afm_factors(w, None, torch.zeros(3), torch.eye(4), 2)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        afm_factors(w, torch.zeros(3), torch.zeros(4), torch.eye(4), 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        afm_factors(w, None, torch.zeros(4), torch.full((4, 4), float("nan")), 2)
    with pytest.raises(ValueError, match="2-d"):
        afm_factors(torch.randn(4), None, torch.zeros(4), torch.eye(4), 2)
    with pytest.raises(TypeError, match="integer"):
        afm_factors(w, None, torch.zeros(4), torch.eye(4), True)
    with pytest.raises(TypeError, match="integer"):
        svd_factors(w, None, 1.5)
    with pytest.raises(ValueError, match="square"):
        explained_variance(torch.zeros(2, 3))


def test_from_factors_loads_every_factor_and_refuses_factors_that_do_not_chain():
    from lightning_afm.compress.factorize import EmbeddingFactors, LinearFactors

    g = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64),
               torch.randn(4, generator=g, dtype=torch.float64))
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    layer = LowRankLinear.from_factors(LinearFactors(a, None, b, c))
    assert layer.first.bias is None
    np.testing.assert_allclose(layer(x).detach().numpy(), x.numpy() @ a.numpy().T @ b.numpy().T + c.numpy(), atol=1e-12)
    table = torch.randn(7, 3, generator=g, dtype=torch.float64)
    emb = LowRankEmbedding.from_factors(EmbeddingFactors(table, b, c))
    np.testing.assert_allclose(emb(torch.tensor([6, 0])).detach().numpy(),
                               table.numpy()[[6, 0]] @ b.numpy().T + c.numpy(), atol=1e-12)
    with pytest.raises(ValueError, match=r"second_weight must be \[m, 3\] to follow a first_weight of \[3, 5\], got \(4, 2\)"):
        LowRankLinear.from_factors(LinearFactors(a, None, b[:, :2], c))
    with pytest.raises(ValueError, match=r"projection_weight must be \[t, 5\] for a table of \[3, 5\], got \(4, 3\)"):
        LowRankEmbedding.from_factors(EmbeddingFactors(a, b, c))
