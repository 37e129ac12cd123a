"""Output statistics: the streaming accumulator against numpy, and the hooked statistics pass."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lightning_afm.compress import OutputCovariance, collect_statistics
from lightning_afm.models.layers.embedding import FieldEmbedding


def _numpy_moments(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rows.mean(axis=0), np.cov(rows, rowvar=False, bias=True)


def test_accumulator_matches_numpy_with_uneven_batches_and_leading_dims():
    rng = np.random.default_rng(0)
    m = 7
    # uneven batch sizes, including a single row and a 3-d batch whose leading dims both count
    chunks = [rng.normal(3.0, 2.0, size=(b, m)) * rng.uniform(0.1, 5, size=m) for b in (1, 13, 50, 4)]
    chunks.append(rng.normal(-1.0, 1.0, size=(6, 5, m)))
    metric = OutputCovariance(m)
    for chunk in chunks:
        metric.update(torch.from_numpy(chunk))
    stats = metric.compute()
    rows = np.concatenate([c.reshape(-1, m) for c in chunks])
    mean, cov = _numpy_moments(rows)
    assert stats.count == rows.shape[0] == 98
    assert stats.mean.dtype == torch.float64 and stats.cov.shape == (m, m)
    np.testing.assert_allclose(stats.mean.numpy(), mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.cov.numpy(), cov, rtol=0, atol=1e-11)


def test_float32_outputs_with_large_mean_keep_an_accurate_covariance():
    # Mean 1000 and spread ~1: raw float32 moments would cancel to noise (eps * 1e6 ~ 0.06 per
    # row, summed); the per-batch centring keeps the error at float32 rounding of the spread.
    torch.manual_seed(0)
    y = (1000.0 + torch.randn(4000, 5) * torch.tensor([1.0, 0.5, 2.0, 0.1, 1.0])).float()
    metric = OutputCovariance(5)
    for chunk in y.split(512):
        metric.update(chunk)
    stats = metric.compute()
    mean, cov = _numpy_moments(y.double().numpy())
    np.testing.assert_allclose(stats.mean.numpy(), mean, rtol=1e-9)
    # relative to each variance: float32 data carry ~1e-7 relative rounding of the spread
    scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert np.abs(stats.cov.numpy() - cov).max() / scale.min() < 1e-4
    np.testing.assert_allclose(stats.cov.numpy() / scale, cov / scale, atol=2e-5)


def test_constant_output_gives_zero_variance_and_no_nan():
    y = torch.randn(100, 4, dtype=torch.float64)
    y[:, 2] = 3.7  # a dead unit
    metric = OutputCovariance(4)
    metric.update(y[:33])
    metric.update(y[33:])
    stats = metric.compute()
    assert torch.isfinite(stats.cov).all() and torch.isfinite(stats.mean).all()
    assert stats.cov[2, 2] >= 0 and abs(stats.cov[2, 2]) < 1e-12
    assert torch.all(stats.cov[2].abs() < 1e-12)


def test_nonfinite_output_raises_naming_the_module():
    metric = OutputCovariance(3, name="mlp.1.linear")
    metric.update(torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"mlp\.1\.linear.*NaN or Inf"):
        metric.compute()
    metric = OutputCovariance(3, name="x")
    metric.update(torch.tensor([[1.0, float("inf"), 0.0]]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        metric.compute()


def test_wrong_width_raises():
    metric = OutputCovariance(3, name="emb")
    with pytest.raises(ValueError, match=r"emb.*\[\.\.\., 3\]"):
        metric.update(torch.zeros(2, 4))


class _Net(nn.Module):
    """Embedding tables, a Linear, dropout (to see eval mode) and a final Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = FieldEmbedding(["a", "b"], [5, 9], embedding_dim=3, init_std=1.0)
        self.hidden = nn.Linear(6 + 2, 4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 1)

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.embeddings(categorical).flatten(1), numeric], dim=1)
        return self.head(self.drop(torch.relu(self.hidden(x)))).squeeze(1)


def _batches(seed: int = 0, sizes=(16, 5, 30)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in sizes:
        # skewed ids so that rows occur with different frequencies
        cat = torch.stack([torch.randint(0, 2, (b,), generator=g) * 2, torch.randint(0, 9, (b,), generator=g)], 1)
        out.append({"categorical": cat, "numeric": torch.rand(b, 2, generator=g)})
    return out


def _run(model):
    return lambda batch: model(batch["categorical"], batch["numeric"])


def test_collect_statistics_linear_and_embedding_match_numpy():
    torch.manual_seed(0)
    model = _Net().double()
    batches = [{k: (v.double() if v.is_floating_point() else v) for k, v in b.items()} for b in _batches()]
    stats = collect_statistics(
        model, {"hidden": "linear", "embeddings.a": "embedding"}, batches, _run(model), progress=False
    )
    with torch.no_grad():
        cat = torch.cat([b["categorical"] for b in batches])
        num = torch.cat([b["numeric"] for b in batches])
        x = torch.cat([model.embeddings(cat).flatten(1), num], 1)
        hidden = model.hidden(x).numpy()
        looked_up = model.embeddings.a.weight[cat[:, 0]].numpy()  # rows repeat as often as they occur
    for name, rows in (("hidden", hidden), ("embeddings.a", looked_up)):
        mean, cov = _numpy_moments(rows)
        assert stats[name].count == rows.shape[0]
        np.testing.assert_allclose(stats[name].mean.numpy(), mean, atol=1e-12)
        np.testing.assert_allclose(stats[name].cov.numpy(), cov, atol=1e-12)


def test_collect_statistics_runs_in_eval_mode_and_restores_each_flag():
    model = _Net()
    model.train()
    model.embeddings.eval()  # a mixed state must come back exactly
    flags = {n: m.training for n, m in model.named_modules()}
    seen = []
    model.drop.register_forward_hook(lambda mod, i, o: seen.append((mod.training, torch.is_grad_enabled())))
    collect_statistics(model, ["hidden"], _batches(), _run(model), progress=False)
    assert seen and all(s == (False, False) for s in seen)
    assert {n: m.training for n, m in model.named_modules()} == flags


def test_interrupted_pass_leaves_model_unchanged():
    model = _Net()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks_before = {n: len(m._forward_hooks) for n, m in model.named_modules()}

    def failing():
        yield from _batches()[:2]
        raise RuntimeError("loader died")

    with pytest.raises(RuntimeError, match="loader died"):
        collect_statistics(model, ["hidden", "embeddings.b"], failing(), _run(model), progress=False)
    assert {n: len(m._forward_hooks) for n, m in model.named_modules()} == hooks_before
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_empty_iterable_unknown_target_and_unused_target_raise():
    model = _Net()
    with pytest.raises(ValueError, match="no batches"):
        collect_statistics(model, ["hidden"], [], _run(model), progress=False)
    with pytest.raises(ValueError, match=r"no module named 'hiden'.*'hidden'"):
        collect_statistics(model, ["hiden"], _batches(), _run(model), progress=False)
    with pytest.raises(ValueError, match="never ran"):
        collect_statistics(model, ["head"], _batches(), lambda b: model.hidden(torch.zeros(2, 8)), progress=False)
    with pytest.raises(ValueError, match="given as 'embedding'"):
        collect_statistics(model, {"hidden": "embedding"}, _batches(), _run(model), progress=False)
    with pytest.raises(ValueError, match="is a Dropout"):
        collect_statistics(model, ["drop"], _batches(), _run(model), progress=False)


def test_collect_statistics_with_progress_bar_and_nan_output():
    model = _Net()
    with torch.no_grad():
        model.hidden.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'hidden'.*NaN or Inf"):
        collect_statistics(model, ["hidden"], _batches(), _run(model), progress=True)


# --------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = _Net()  # identical weights on every rank
        shard = _batches()[rank::world]  # together the shards cover every batch once
        stats = collect_statistics(model, ["hidden", "embeddings.b"], shard, _run(model), progress=False)
        torch.save({k: (v.mean, v.cov, v.count) for k, v in stats.items()}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_statistics_sum_over_ddp_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        results = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(2)]
    torch.manual_seed(0)
    model = _Net()
    single = collect_statistics(model, ["hidden", "embeddings.b"], _batches(), _run(model), progress=False)
    for name, ref in single.items():
        for res in results:
            mean, cov, count = res[name]
            assert count == ref.count == 51
            torch.testing.assert_close(mean, ref.mean, rtol=0, atol=1e-9)
            torch.testing.assert_close(cov, ref.cov, rtol=0, atol=1e-9)
        # every rank holds bit-identical statistics, so every rank builds identical factors
        assert torch.equal(results[0][name][1], results[1][name][1])


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_forward_stops_after_the_last_target_and_statistics_are_unchanged():
    torch.manual_seed(0)
    model = _Net().double()
    batches = [{k: (v.double() if v.is_floating_point() else v) for k, v in b.items()} for b in _batches()]
    head_calls = _count_calls(model.head)
    cut = collect_statistics(model, ["hidden", "embeddings.b"], batches, _run(model), progress=False)
    # the first batch runs in full (to count target calls), the other two stop after `hidden`
    assert head_calls[0] == 1
    full = collect_statistics(model, ["hidden", "embeddings.b"], batches, _run(model), progress=False,
                              stop_after_targets=False)
    assert head_calls[0] == 1 + len(batches)
    for name in full:
        assert cut[name].count == full[name].count
        torch.testing.assert_close(cut[name].cov, full[name].cov, rtol=0, atol=0)
        torch.testing.assert_close(cut[name].mean, full[name].mean, rtol=0, atol=0)


class _SharedLayerNet(nn.Module):
    """The same Linear applied twice per forward (weight sharing)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shared(torch.relu(self.shared(x))))


def test_a_target_called_twice_per_forward_counts_both_calls():
    torch.manual_seed(0)
    model = _SharedLayerNet().double()
    xs = [torch.randn(b, 3, dtype=torch.float64) for b in (7, 4, 9)]
    stats = collect_statistics(model, ["shared"], xs, model, progress=False)
    with torch.no_grad():
        first = [model.shared(x) for x in xs]
        rows = torch.cat(first + [model.shared(torch.relu(y)) for y in first]).numpy()
    mean, cov = _numpy_moments(rows)
    assert stats["shared"].count == 2 * 20
    np.testing.assert_allclose(stats["shared"].mean.numpy(), mean, atol=1e-12)
    np.testing.assert_allclose(stats["shared"].cov.numpy(), cov, atol=1e-12)


def test_early_stop_is_not_swallowed_by_a_models_except_exception():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    head_calls = _count_calls(model[2])

    def guarded(x):
        try:
            return model(x)
        except Exception:  # noqa: BLE001 - the point of the test
            raise AssertionError("the early stop reached an `except Exception`")

    xs = [torch.randn(5, 3, dtype=torch.float64) for _ in range(4)]
    stats = collect_statistics(model, ["0"], xs, guarded, progress=False)
    assert stats["0"].count == 20 and head_calls[0] == 1

