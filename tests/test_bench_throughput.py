"""The benchmark's inputs and timer: Zipf ids, seeded batches, interleaved rounds, the summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_afm.bench.shapes import paper_shape
from lightning_afm.bench.throughput import Timed, make_batches, summarize, time_interleaved, zipf_ids


def test_zipf_ids_follow_the_truncated_zipf_law():
    rng = np.random.default_rng(0)
    exponent, vocab, n = 1.2, 6, 200_000
    ids = zipf_ids(vocab, n, exponent, rng)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < vocab
    expected = np.arange(1, vocab + 1, dtype=np.float64) ** -exponent
    expected /= expected.sum()
    observed = np.bincount(ids, minlength=vocab) / n
    # standard error of a frequency near 0.4 over 200k draws is about 0.0011
    np.testing.assert_allclose(observed, expected, atol=0.005)


def test_zipf_ids_cover_large_tables_and_reject_bad_arguments():
    ids = zipf_ids(10_000_000, 1000, 1.0, np.random.default_rng(1))
    assert ids.max() < 10_000_000 and (ids == 0).sum() > 20  # id 0 has probability 1/H(1e7) ~ 6 %
    with pytest.raises(ValueError, match="exponent"):
        zipf_ids(10, 5, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="vocab_size"):
        zipf_ids(0, 5, 1.0, np.random.default_rng(0))


def test_batches_are_seeded_and_shaped():
    shape = paper_shape("criteo", vocab_cap=30)
    a = make_batches(shape, batch=16, count=3, seed=5)
    b = make_batches(shape, batch=16, count=3, seed=5)
    c = make_batches(shape, batch=16, count=3, seed=6)
    assert len(a) == 3 and a[0].categorical.shape == (16, 26) and a[0].numeric.shape == (16, 13)
    assert all(torch.equal(x.categorical, y.categorical) and torch.equal(x.numeric, y.numeric) for x, y in zip(a, b))
    assert not torch.equal(a[0].categorical, c[0].categorical)
    cat = torch.cat([x.categorical for x in a])
    assert (cat < torch.tensor(shape.vocab_sizes)).all() and (cat >= 0).all()
    num = torch.cat([x.numeric for x in a])
    assert num.dtype == torch.float32 and num.min() >= 0 and num.max() <= 1
    avazu = make_batches(paper_shape("avazu", 10), batch=4, count=1, seed=0)[0]
    assert avazu.numeric.shape == (4, 0)


def test_interleaving_rotates_the_order_and_times_every_input():
    calls: list[tuple[str, int]] = []
    grad_enabled: list[bool] = []

    def runner(name):
        def forward(x):
            calls.append((name, x))
            grad_enabled.append(torch.is_inference_mode_enabled())
        return Timed(forward, [0, 1])

    times = time_interleaved({"a": runner("a"), "b": runner("b"), "c": runner("c")}, rounds=3, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6, "c": 6}
    assert all(t >= 0 for v in times.values() for t in v)
    warm, timed = calls[:3], calls[3:]
    assert warm == [("a", 0), ("b", 0), ("c", 0)]
    order = [timed[i][0] for i in range(0, len(timed), 2)]
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(grad_enabled)
    with pytest.raises(ValueError, match="rounds"):
        time_interleaved({"a": runner("a")}, rounds=0)


def test_summary_uses_the_median_and_reports_the_spread():
    result = summarize([0.5, 0.1, 0.2, 0.3, 0.4], batch=100)
    assert result.median_batch_s == pytest.approx(0.3)
    assert result.samples_per_s == pytest.approx(100 / 0.3)
    q1, _, q3 = np.percentile([0.1, 0.2, 0.3, 0.4, 0.5], [25, 50, 75], method="weibull")
    assert result.iqr_pct == pytest.approx(100 * (q3 - q1) / 0.3)
    assert summarize([0.2], batch=10).iqr_pct == 0.0
    with pytest.raises(ValueError):
        summarize([], batch=10)


def test_matmul_multiply_adds_counts_the_products_of_one_forward():
    from torch import nn

    from lightning_afm.bench.throughput import Timed, matmul_multiply_adds

    net = nn.Sequential(nn.Linear(10, 3), nn.ReLU(), nn.Linear(3, 2))
    runner = Timed(net, [torch.randn(4, 10), torch.randn(9, 10)])
    assert matmul_multiply_adds(runner) == 4 * (10 * 3 + 3 * 2)  # first input only; bias, ReLU not counted
    bmm = Timed(lambda x: torch.bmm(x, x.transpose(1, 2)), [torch.randn(5, 3, 7)])
    assert matmul_multiply_adds(bmm) == 5 * 3 * 3 * 7
    q = torch.randn(2, 4, 6, 8)  # [B, heads, fields, head dim]: q k^T and the weighted sum of v
    attention = Timed(lambda x: torch.nn.functional.scaled_dot_product_attention(x, x, x), [q])
    assert matmul_multiply_adds(attention) == 2 * (2 * 4 * 6 * 6 * 8)
    # no global module hooks while counting, so models stay on their hook-free fast paths
    hooks_seen = []
    probe = Timed(lambda x: hooks_seen.append(dict(torch.nn.modules.module._global_forward_pre_hooks)) or x @ x.T,
                  [torch.randn(3, 2)])
    assert matmul_multiply_adds(probe) == 3 * 2 * 3 and hooks_seen == [{}]


def test_the_multiply_add_count_sees_attention_whichever_kernel_runs_it():
    from lightning_afm.bench.throughput import Timed, matmul_multiply_adds
    from lightning_afm.inference import Tensors
    from lightning_afm.inference.attention import InferenceInteracting
    from lightning_afm.models.layers.attention import InteractingLayer

    layer = InteractingLayer(16, 2).eval()
    x = torch.randn(3, 26, 16)
    # four 16 x 16 projections per field, then per head 26 x 26 x 8 twice
    expected = 3 * 26 * 16 * 64 + 3 * 2 * 2 * 26 * 26 * 8
    for kernel in ("auto", "bmm", "sdpa"):  # auto: the compiled kernel where it built
        assert matmul_multiply_adds(Timed(InferenceInteracting(layer, Tensors(), kernel), [x])) == expected
