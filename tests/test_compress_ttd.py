"""TT-Rec tables: shapes, lookups against dense and numpy references, TT-SVD error, gradients, surgery, replay."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_afm.compress import (
    CompressionPlan,
    PlanEntry,
    TTEmbedding,
    balanced_dim_factors,
    balanced_row_factors,
    compress_embedding_ttd,
    compress_embeddings_ttd,
    compress_targets,
    replay_plan,
    resolve_targets,
    tt_svd,
)
from lightning_afm.compress.checkpoint import PLAN_CHECKPOINT_KEY, entry_is_applied, restore_compressed_structure
from lightning_afm.compress.kinds.tt_embedding import select_tt_tables
from lightning_afm.compress.ttd import (
    sampled_gaussian_,
    tt_ranks_for,
    tt_rec_dim_factors,
    tt_rec_init_std,
)

VOCAB, DIM, NUMERIC = [7, 11, 50, 9], 8, 3


def _numpy_row(cores, row_factors, i):
    """Row ``i`` from the cores with numpy: mixed-radix digits, then the chain of core slices."""
    digits = np.unravel_index(i, row_factors)
    slices = [c.detach().double().numpy()[k] for c, k in zip(cores, digits)]  # [r, d, r']
    acc = np.ones((1, 1))  # [width so far, r]
    for g in slices:
        acc = np.einsum("wa,adb->wdb", acc, g).reshape(-1, g.shape[2])
    return acc[:, 0]


def _unfolding_tails(table, row_factors, dim_factors, ranks):
    """Per unfolding k of the padded table as a [n1 d1, ..., nc dc] tensor: squared singular values past r_k."""
    s, t = table.shape
    n, d = list(row_factors), list(dim_factors)
    padded = np.zeros((int(np.prod(n)), t))
    padded[:s] = table
    c = len(n)
    tensor = padded.reshape(*n, *d).transpose([i for k in range(c) for i in (k, c + k)])
    tails = []
    for k in range(c - 1):
        left = int(np.prod([n[i] * d[i] for i in range(k + 1)]))
        sv = np.linalg.svd(tensor.reshape(left, -1), compute_uv=False)
        tails.append(float((sv[ranks[k + 1] :] ** 2).sum()))
    return tails


# --------------------------------------------------------------------------- shapes


def test_factorisations_cover_the_table_and_are_balanced():
    for s in [1, 2, 7, 30, 999, 1000, 1001, 65_536, 1_000_000, 10_131_227]:
        f = balanced_row_factors(s)
        assert len(f) == 3 and math.prod(f) >= s
        assert max(f) - min(f) <= max(1, math.ceil(0.05 * max(f)))  # near-equal
        assert math.prod(f) < s * 1.1 + 8  # little padding
    assert balanced_row_factors(1_000_000) == [100, 100, 100]
    assert balanced_row_factors(100, num_cores=2) == [10, 10]
    for t in [1, 2, 8, 16, 50, 64, 7]:
        d = balanced_dim_factors(t)
        assert math.prod(d) == t and d == sorted(d)
    assert balanced_dim_factors(16) == [2, 2, 4] and balanced_dim_factors(50) == [2, 5, 5]
    assert tt_ranks_for([100, 100, 100], [2, 2, 4], 16) == [1, 16, 16, 1]
    assert tt_ranks_for([4, 3, 3], [2, 2, 2], 64) == [1, 8, 6, 1]  # clipped by the unfoldings' sizes
    with pytest.raises(ValueError, match="at least 2 cores"):
        balanced_row_factors(10, num_cores=1)
    with pytest.raises(ValueError, match="multiply to 8, fewer than the 9 rows"):
        TTEmbedding(9, 4, row_factors=[2, 2, 2], dim_factors=[1, 2, 2])
    with pytest.raises(ValueError, match="must equal it exactly"):
        TTEmbedding(8, 4, row_factors=[2, 2, 2], dim_factors=[1, 2, 3])
    with pytest.raises(ValueError, match="tt_rank must be a positive int"):
        TTEmbedding(8, 4, tt_rank=0)


def test_parameter_count_is_the_core_sizes_and_far_below_the_dense_table():
    emb = TTEmbedding(1_000_000, 16)  # the speed-note shape, R = 16
    assert (emb.num_embeddings, emb.embedding_dim, emb.tt_rank) == (1_000_000, 16, 16)
    assert [tuple(c.shape) for c in emb.cores] == [(100, 1, 2, 16), (100, 16, 2, 16), (100, 16, 4, 1)]
    expected = 100 * 2 * 16 + 100 * 16 * 2 * 16 + 100 * 16 * 4
    assert emb.num_parameters == expected == sum(p.numel() for p in emb.parameters())
    assert emb.compression_ratio == pytest.approx(16_000_000 / expected)
    assert emb.num_parameters * 200 < 16_000_000


# --------------------------------------------------------------------------- lookups


@pytest.mark.parametrize("deduplicate", [True, False])
def test_gathered_rows_equal_the_dense_table_and_numpy(deduplicate):
    torch.manual_seed(0)
    emb = TTEmbedding(1000, 12, tt_rank=5, deduplicate=deduplicate).double()
    with torch.no_grad():
        full = emb.full_table()
    assert full.shape == (1000, 12)
    idx = torch.cat([torch.randint(0, 1000, (40,)), torch.tensor([999, 0, 999, 17, 17, 17])])
    rows = emb(idx)
    torch.testing.assert_close(rows, full[idx], rtol=0, atol=1e-12)
    for i in [0, 1, 17, 537, 999]:  # independent of full_table's reshapes
        np.testing.assert_allclose(full[i].numpy(), _numpy_row(emb.cores, emb.row_factors, i), rtol=0, atol=1e-12)
    # any index shape, int32 too, and an empty batch
    grid = idx[:12].view(3, 4)
    torch.testing.assert_close(emb(grid), full[grid], rtol=0, atol=1e-12)
    torch.testing.assert_close(emb(grid.int()), full[grid], rtol=0, atol=1e-12)
    assert emb(torch.zeros(0, dtype=torch.long)).shape == (0, 12)


def test_bad_indices_raise_clear_errors():
    emb = TTEmbedding(10, 4, tt_rank=2)  # 12 padded rows: 10 and 11 exist in the cores but not in the table
    for dedup in (True, False):
        emb.deduplicate = dedup
        with pytest.raises(IndexError, match=r"index 10 is out of range .* \[0, 10\)"):
            emb(torch.tensor([3, 10]))
        with pytest.raises(IndexError, match="index -1 is out of range"):
            emb(torch.tensor([-1, 3]))
    with pytest.raises(TypeError, match="must be int64"):
        emb(torch.tensor([1.0]))


def test_padding_row_reads_zero_and_gets_no_gradient():
    torch.manual_seed(1)
    emb = TTEmbedding(20, 4, tt_rank=3, padding_idx=0).double()
    out = emb(torch.tensor([0, 0, 5]))
    assert torch.equal(out[:2], torch.zeros(2, 4, dtype=torch.float64)) and out[2].abs().sum() > 0
    assert torch.equal(emb.full_table()[0], torch.zeros(4, dtype=torch.float64))
    emb(torch.tensor([0, 0])).sum().backward()
    assert all(c.grad is None or torch.count_nonzero(c.grad) == 0 for c in emb.cores)


# --------------------------------------------------------------------------- gradients


def test_gradients_reach_every_core_and_match_finite_differences():
    torch.manual_seed(2)
    emb = TTEmbedding(30, 8, tt_rank=3).double()
    idx = torch.tensor([0, 29, 7, 7, 13])
    weights = torch.randn(5, 8, dtype=torch.float64)
    (emb(idx) * weights).sum().backward()
    for core in emb.cores:
        assert core.grad is not None and torch.count_nonzero(core.grad) > 0

    # an independent reference: plain indexing of each core (no F.embedding, no dedup)
    cores = [c.detach().clone().requires_grad_(True) for c in emb.cores]

    def through(*cs):
        out = None
        b = idx.shape[0]
        for k, c in enumerate(cs):
            digit = torch.div(idx, emb._strides[k], rounding_mode="floor") % emb.row_factors[k]
            piece = c[digit]  # [B, r, d, r']
            if out is None:
                out = piece.reshape(b, -1, c.shape[3])
            else:
                out = torch.bmm(out, piece.reshape(b, c.shape[1], -1)).reshape(b, -1, c.shape[3])
        return out.reshape(b, -1)

    torch.testing.assert_close(through(*cores), emb(idx))
    assert torch.autograd.gradcheck(through, tuple(cores))
    # the module's own backward equals autograd through this reference, with or without dedup
    for dedup in (True, False):
        emb.zero_grad()
        emb.deduplicate = dedup
        (emb(idx) * weights).sum().backward()
        ref = torch.autograd.grad((through(*cores) * weights).sum(), cores)
        for core, g in zip(emb.cores, ref):
            torch.testing.assert_close(core.grad, g)


def test_a_few_adam_steps_fit_a_target_table():
    torch.manual_seed(3)
    target = torch.randn(64, 8) * 0.1
    emb = TTEmbedding(64, 8, tt_rank=4, init_std=0.1)
    opt = torch.optim.Adam(emb.parameters(), lr=1e-2)
    idx = torch.arange(64)
    first = None
    for _ in range(60):
        loss = (emb(idx) - target).pow(2).mean()
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


# --------------------------------------------------------------------------- initialisation


def test_tt_svd_at_full_rank_reproduces_the_table():
    torch.manual_seed(4)
    table = torch.randn(30, 8, dtype=torch.float64)
    emb = TTEmbedding.from_table(table, tt_rank=64)
    assert emb.row_factors == [4, 3, 3] and emb.tt_ranks == [1, 8, 6, 1]
    assert (emb.full_table() - table).abs().max() < 1e-8
    assert (emb(torch.arange(30)) - table).abs().max() < 1e-8
    assert emb.tt_svd_relative_error < 1e-12
    assert emb.cores[0].dtype == torch.float64


def test_from_table_passes_the_structure_on_and_refuses_what_the_table_gives():
    torch.manual_seed(6)
    table = torch.randn(30, 8, dtype=torch.float64)
    emb = TTEmbedding.from_table(table, 64, row_factors=[5, 6], dim_factors=[2, 4], padding_idx=-1, deduplicate=False)
    assert (emb.row_factors, emb.dim_factors, emb.padding_idx, emb.deduplicate) == ([5, 6], [2, 4], 29, False)
    rows = emb(torch.arange(30))
    assert (rows[:29] - table[:29]).abs().max() < 1e-8  # two cores at full rank: exact
    assert not rows[29].any()  # the padding row reads as zeros
    for taken in ({"dtype": torch.float32}, {"init_std": 0.1}, {"num_embeddings": 30}):
        with pytest.raises(TypeError, match="from the table it decomposes"):
            TTEmbedding.from_table(table, 4, **taken)


def test_tt_svd_error_is_what_the_truncations_discard_and_falls_with_rank():
    torch.manual_seed(5)
    # a table with decaying structure, so every rank leaves a different error
    table = (torch.randn(60, 8, dtype=torch.float64) @ torch.diag(0.7 ** torch.arange(8.0, dtype=torch.float64)))
    table = table + 0.3 * torch.randn(60, 1, dtype=torch.float64) * torch.randn(1, 8, dtype=torch.float64)
    rows, dims = balanced_row_factors(60), balanced_dim_factors(8)
    padded_rows = math.prod(rows)  # 64: rows 60..63 are zero padding
    assert padded_rows > 60
    errors = []
    for rank in [1, 2, 3, 4, 6, 8, 12]:
        dec = tt_svd(table, rows, dims, rank, balance=False)
        emb = TTEmbedding.from_table(table, tt_rank=rank)
        # the train over all 64 rows (numpy chain products), against the zero-padded table
        train = np.stack([_numpy_row(emb.cores, rows, i) for i in range(padded_rows)])
        target = np.concatenate([table.numpy(), np.zeros((padded_rows - 60, 8))])
        err2 = float(((train - target) ** 2).sum())
        # left-orthogonal TT-SVD: squared error = sum of the discarded squared singular values
        assert err2 == pytest.approx(sum(dec.discarded), rel=1e-9, abs=1e-20)
        assert dec.error == pytest.approx(math.sqrt(err2), rel=1e-9, abs=1e-10)
        # independent bounds (numpy SVD of each unfolding): max_k tail_k <= err^2 <= sum_k tail_k
        tails = _unfolding_tails(table.numpy(), rows, dims, tt_ranks_for(rows, dims, rank))
        assert max(tails) * (1 - 1e-9) <= err2 <= sum(tails) * (1 + 1e-9) + 1e-20
        # the real rows are part of it; padding rows only add error
        with torch.no_grad():
            table_err2 = float((emb.full_table() - table).pow(2).sum())
        assert table_err2 <= err2 * (1 + 1e-9) + 1e-20
        assert emb.tt_svd_relative_error == pytest.approx(math.sqrt(err2) / float(table.norm()), rel=1e-9, abs=1e-12)
        # balancing rescales the cores to equal norms without changing the product
        norms = [float(c.detach().norm()) for c in emb.cores]
        assert max(norms) == pytest.approx(min(norms), rel=1e-9)
        errors.append(err2)
    assert all(a > b for a, b in zip(errors, errors[1:-1]))  # strictly falling until exact
    assert errors[-1] < 1e-20


def test_random_init_gives_the_product_the_target_variance():
    torch.manual_seed(6)
    target_std = 0.05
    variances, core_stds = [], []
    for _ in range(20):
        emb = TTEmbedding(1000, 16, tt_rank=8, init_std=target_std).double()
        variances.append(float(emb.full_table().detach().var()))
        core_stds.append([float(c.detach().std()) for c in emb.cores])
    # per core: sigma^(2c) * r_1 r_2 = target^2, so sigma = (target^2 / 64)^(1/6)
    sigma = (target_std**2 / 64) ** (1 / 6)
    assert np.allclose(np.mean(core_stds, axis=0), sigma, rtol=0.05)
    assert np.mean(variances) == pytest.approx(target_std**2, rel=0.25)
    # truncated at 2 sigma (scaled): no draw beyond
    bound = 2 * sigma / math.sqrt(0.7737)
    assert all(float(c.detach().abs().max()) <= bound * 1.0001 for c in emb.cores)
    with pytest.raises(ValueError, match="target_std must be a positive"):
        sampled_gaussian_(list(emb.cores), 0.0)


# --------------------------------------------------------------------------- surgery and plans


def _deepfm(seed=0):
    from lightning_afm.data.schema import Schema
    from lightning_afm.models import DeepFM

    torch.manual_seed(seed)
    schema = Schema.from_vocab_sizes(VOCAB, numeric=NUMERIC)
    return DeepFM(schema, embedding_dim=DIM, mlp_hidden=[16, 12, 10], dropout=0.0, embedding_init_std=0.3)


def _inputs(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, v, (n,), generator=g) for v in VOCAB], 1)
    return cat, torch.rand(n, NUMERIC, generator=g)


def test_compress_embedding_ttd_validates_before_changing_anything():
    model = _deepfm()
    before = copy.deepcopy(model.state_dict())
    for kwargs, match in [
        ({"name": "embeddings.C1", "tt_rank": 0}, "tt_rank must be a positive int"),
        ({"name": "embeddings.C1", "tt_rank": 2.5}, "tt_rank must be a positive int"),
        ({"name": "mlp.0.linear", "tt_rank": 4}, "is a Linear, not an nn.Embedding"),
        ({"name": "embeddings.nope", "tt_rank": 4}, "has no submodule"),
        ({"name": "embeddings.C1", "tt_rank": 4, "init": "zeros"}, "init must be one of"),
        ({"name": "embeddings.C1", "tt_rank": 4, "row_factors": [2, 2, 1]}, "'embeddings.C1'.*fewer than the 7 rows"),
    ]:
        with pytest.raises(ValueError, match=match):
            compress_embedding_ttd(model, **kwargs)
    with pytest.raises(ValueError, match="has no submodule"):  # all or nothing
        compress_embeddings_ttd(model, ["embeddings.C1", "embeddings.nope"], tt_rank=4)
    with pytest.raises(ValueError, match="sparse gradients"):
        compress_embedding_ttd(nn.Sequential(nn.Embedding(10, 4, sparse=True)), "0")
    assert all(isinstance(t, nn.Embedding) for t in model.embeddings.tables())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)


@pytest.mark.parametrize("init", ["svd", "random"])
def test_deepfm_with_tt_tables_replays_and_loads_identically(init):
    model = _deepfm(seed=0)
    model.eval()
    cat, num = _inputs(seed=1)
    with torch.no_grad():
        dense = model(cat, num)
    names = [f"embeddings.C{i}" for i in range(1, 5)]
    plan = CompressionPlan(compress_embeddings_ttd(model, names, tt_rank=64 if init == "svd" else 4, init=init))
    assert all(isinstance(model.get_submodule(n), TTEmbedding) for n in names)
    entry = plan.entries[2]
    assert (entry.kind, entry.method, entry.shape) == ("tt_embedding", "ttd", [50, DIM])
    assert entry.flags["row_factors"] == [4, 4, 4] and entry.flags["dim_factors"] == [2, 2, 2]
    assert entry.flags["init"] == init
    with torch.no_grad():
        compressed = model(cat, num)
    if init == "svd":  # full TT-rank: the model is unchanged up to float32 rounding
        assert max(e.flags["relative_error"] for e in plan) < 1e-5
        torch.testing.assert_close(compressed, dense, rtol=1e-4, atol=1e-4)
    else:  # random cores at TT-Rec's scale 1/sqrt(3 rows), whatever the old table's (0.3 here)
        stds = [float(model.get_submodule(n).full_table().detach().std()) for n in names]
        targets = [tt_rec_init_std(model.get_submodule(n).num_embeddings) for n in names]
        assert all(0.3 * t < s < 3 * t for s, t in zip(stds, targets))

    fresh = _deepfm(seed=9)
    replay_plan(fresh, CompressionPlan.from_json(plan.to_json()))
    assert all(entry_is_applied(fresh, e) for e in plan)
    fresh.load_state_dict(model.state_dict())  # strict: same keys and shapes
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(cat, num), compressed)
    # through a checkpoint dict; replaying again is a no-op (entries already applied)
    other = _deepfm(seed=10)
    checkpoint = {PLAN_CHECKPOINT_KEY: plan.to_dict(), "state_dict": model.state_dict()}
    assert not any(entry_is_applied(other, e) for e in plan)
    assert restore_compressed_structure(other, checkpoint) and restore_compressed_structure(other, checkpoint)
    other.load_state_dict(checkpoint["state_dict"])
    other.eval()
    with torch.no_grad():
        assert torch.equal(other(cat, num), compressed)
    # a TT table is not an nn.Embedding target any more
    with pytest.raises(ValueError, match="already compressed"):
        resolve_targets(model, "embeddings.C1", "embedding")


def test_tt_tables_mix_with_low_rank_mlp_entries_and_train():
    model = _deepfm(seed=0)
    plan = CompressionPlan(compress_targets(model, ["mlp.1.linear", "mlp.2.linear"], None, 4, method="svd"))
    plan.append(compress_embedding_ttd(model, "embeddings.C3", tt_rank=3, init="random"))
    fresh = _deepfm(seed=1)
    replay_plan(fresh, plan.to_dict())
    fresh.load_state_dict(model.state_dict())
    cat, num = _inputs(seed=2)
    logits = model(cat, num)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.rand(logits.shape[0]).round()).backward()
    for core in model.get_submodule("embeddings.C3").cores:
        assert core.grad is not None and torch.count_nonzero(core.grad) > 0
    # a plan for another shape is refused clearly
    from lightning_afm.data.schema import Schema
    from lightning_afm.models import DeepFM

    wrong = DeepFM(Schema.from_vocab_sizes([7, 11, 51, 9], numeric=NUMERIC), embedding_dim=DIM, mlp_hidden=[16, 12, 10])
    with pytest.raises(ValueError, match=r"plan entry 2 .*embeddings\.C3.*same model architecture"):
        replay_plan(wrong, plan)


def test_plan_entries_check_the_method_per_kind():
    flags = {"row_factors": [3, 2, 2], "dim_factors": [1, 2, 2]}
    entry = PlanEntry("e", "tt_embedding", "ttd", 16, [10, 4], flags=flags)
    assert PlanEntry.from_dict(entry.to_dict()) == entry
    with pytest.raises(ValueError, match=r"method must be one of \('ttd',\)"):
        PlanEntry("e", "tt_embedding", "svd", 16, [10, 4])
    with pytest.raises(ValueError, match=r"method must be one of \('afm', 'svd'\)"):
        PlanEntry("e", "embedding", "ttd", 16, [10, 4])
    with pytest.raises(ValueError, match="rank must be a positive int"):
        PlanEntry("e", "tt_embedding", "ttd", 0, [10, 4])


# --------------------------------------------------------------------------- TT-Rec's layout (Table 4)


def test_tt_rec_width_factors_put_the_small_factor_inside():
    # the inner cores carry two TT-ranks, the end cores one: the smallest width factor goes inside
    assert tt_rec_dim_factors(16) == [2, 2, 4] and tt_rec_dim_factors(50) == [5, 2, 5]
    assert tt_rec_dim_factors(1) == [1, 1, 1] and tt_rec_dim_factors(30, 4) == [3, 1, 2, 5]
    for t in (1, 6, 16, 50, 64, 97):
        assert sorted(tt_rec_dim_factors(t)) == sorted(balanced_dim_factors(t))
    # fewest entries among the orders of the same factors, at rank 16 on a cube of rows
    def entries(d, n=100, r=16):
        return n * d[0] * r + n * r * d[1] * r + n * r * d[2]
    for t in (16, 50, 12, 98):
        orders = {tuple(p) for p in __import__("itertools").permutations(balanced_dim_factors(t))}
        assert entries(tt_rec_dim_factors(t)) == min(entries(p) for p in orders)
    assert TTEmbedding(6_729_486, 50).dim_factors == [5, 2, 5]  # the default layout


def test_random_init_has_tt_rec_scale():
    assert tt_rec_init_std(3) == pytest.approx(1 / 3) and tt_rec_init_std(1_000_000) == pytest.approx(1 / math.sqrt(3e6))
    with pytest.raises(ValueError, match="num_embeddings must be >= 1"):
        tt_rec_init_std(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20_000, 16))
    compress_embedding_ttd(model, "0", tt_rank=16, init="random")
    std = float(model[0].full_table().detach().double().std())
    assert std == pytest.approx(tt_rec_init_std(20_000), rel=0.15)  # U(-1/sqrt(s), 1/sqrt(s))'s std


def test_select_tt_tables_keeps_small_tables_dense_and_adds_lr_tables():
    model = _deepfm()  # VOCAB [7, 11, 50, 9]
    names = [f"embeddings.C{i}" for i in range(1, 5)]
    assert select_tt_tables(model, names, min_rows=10) == ["embeddings.C2", "embeddings.C3", "linear.C2", "linear.C3"]
    assert select_tt_tables(model, names, min_rows=10, lr_tables=False) == ["embeddings.C2", "embeddings.C3"]
    assert select_tt_tables(model, names, min_rows=1)[-4:] == [f"linear.C{i}" for i in range(1, 5)]
    with pytest.raises(ValueError, match=r"no table has 51 rows or more \(the largest of 4 has 50\)"):
        select_tt_tables(model, names, min_rows=51)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="min_rows must be a positive int"):
            select_tt_tables(model, names, min_rows=bad)
    # a module without a `linear` part: the tables alone
    plain = nn.ModuleDict({"embeddings": nn.ModuleDict({"a": nn.Embedding(30, 4), "b": nn.Embedding(3, 4)})})
    assert select_tt_tables(plain, ["embeddings.a", "embeddings.b"], min_rows=10) == ["embeddings.a"]


def test_tt_rec_deepfm_checkpoint_reloads_with_lr_trains():
    model = _deepfm(seed=0).eval()
    names = select_tt_tables(model, [f"embeddings.C{i}" for i in range(1, 5)], min_rows=10)
    plan = CompressionPlan(compress_embeddings_ttd(model, names, tt_rank=4, init="random"))
    assert isinstance(model.linear.C3, TTEmbedding) and model.linear.C3.dim_factors == [1, 1, 1]
    assert type(model.linear.C1) is nn.Embedding and type(model.embeddings.C4) is nn.Embedding
    cat, num = _inputs(seed=3)
    with torch.no_grad():
        out = model(cat, num)
    # the model's own hook (what Lightning's load_from_checkpoint calls) rebuilds the structure
    fresh = _deepfm(seed=5)
    checkpoint = {PLAN_CHECKPOINT_KEY: plan.to_dict(), "state_dict": copy.deepcopy(model.state_dict())}
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])  # strict
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(cat, num), out)
    # the L2 term's "full" mode covers the LR trains' cores
    table_params = {id(p) for p in fresh.table_weights()}
    assert all(id(p) in table_params for p in fresh.linear.C3.parameters())


def test_random_tt_rec_deepfm_learns_a_tiny_problem():
    torch.manual_seed(0)
    model = _deepfm(seed=1)
    names = select_tt_tables(model, [f"embeddings.C{i}" for i in range(1, 5)], min_rows=10)
    compress_embeddings_ttd(model, names, tt_rank=4, init="random")
    cat, num = _inputs(seed=2, n=256)
    # a label the trains must carry: whether C3's id is even (C3 is a 50-row train, with its LR train)
    label = (cat[:, 2] % 2 == 0).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(cat, num), label)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is not None for p in model.linear.C3.parameters())
