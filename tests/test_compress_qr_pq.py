"""The QR trick and product quantization against independent numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_afm.compress.pq import PQEmbedding, kmeans, nearest_centroid, pq_stored_values
from lightning_afm.compress.qr import QREmbedding, qr_rows, qr_saves


# ----------------------------------------------------------------------------------------- QR


@pytest.mark.parametrize("operation", ["mult", "add"])
def test_qr_lookup_composes_quotient_and_remainder_rows(operation):
    torch.manual_seed(0)
    emb = QREmbedding(53, 6, collisions=5, operation=operation, init_std=0.3).double()
    with torch.no_grad():
        emb.remainder.weight.normal_()  # not the identity start: the composition must show
    q, r = emb.quotient.weight.detach().numpy(), emb.remainder.weight.detach().numpy()
    ids = np.array([0, 4, 5, 17, 52, 52, 31])
    expected = q[ids // 5] * r[ids % 5] if operation == "mult" else q[ids // 5] + r[ids % 5]
    got = emb(torch.from_numpy(ids)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert emb.quotient.num_embeddings == math.ceil(53 / 5) == 11 and emb.remainder.num_embeddings == 5
    assert emb.num_parameters == (11 + 5) * 6 == sum(p.numel() for p in emb.parameters())


def test_qr_rows_are_distinct_and_gradients_reach_both_tables():
    torch.manual_seed(1)
    emb = QREmbedding(40, 4, collisions=4)
    with torch.no_grad():
        emb.remainder.weight.normal_()
    table = emb.full_table().detach().numpy()
    assert len(np.unique(table.round(8), axis=0)) == 40  # complementary partitions: no two ids share a row
    emb(torch.tensor([7, 9])).sum().backward()
    assert emb.quotient.weight.grad[[1, 2]].abs().sum() > 0 and emb.quotient.weight.grad[0].abs().sum() == 0
    assert emb.remainder.weight.grad[[3, 1]].abs().sum() > 0 and emb.remainder.weight.grad[0].abs().sum() == 0


@pytest.mark.parametrize("operation", ["mult", "add"])
def test_qr_from_table_starts_at_the_bucket_means(operation):
    rng = np.random.default_rng(2)
    weight = rng.normal(size=(23, 3))
    emb = QREmbedding.from_table(torch.from_numpy(weight), collisions=4, operation=operation)
    buckets = np.arange(23) // 4
    means = np.stack([weight[buckets == b].mean(0) for b in range(6)])  # the last bucket has 3 rows
    np.testing.assert_allclose(emb.full_table().detach().numpy(), means[buckets], rtol=1e-12)


def test_qr_random_start_has_the_asked_scale():
    torch.manual_seed(3)
    for operation in ("mult", "add"):
        table = QREmbedding(20000, 16, collisions=8, operation=operation, init_std=0.01).full_table()
        assert table.std().item() == pytest.approx(0.01, rel=0.1)


def test_qr_counts_and_bad_input():
    assert qr_rows(1000, 8) == 125 + 8
    assert qr_saves(1000, 8) and qr_saves(16, 8) and not qr_saves(10, 8)  # 16 rows: 2 + 8 < 16; 10 rows: 2 + 8
    with pytest.raises(ValueError, match="collisions must be an int >= 2"):
        QREmbedding(10, 4, collisions=1)
    with pytest.raises(ValueError, match="operation must be one of"):
        QREmbedding(10, 4, collisions=2, operation="concat")
    with pytest.raises(ValueError, match="2-D"):
        QREmbedding.from_table(torch.zeros(4), collisions=2)


# ----------------------------------------------------------------------------------------- PQ


def _numpy_nearest(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    dist = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    return dist.argmin(1)


def test_nearest_centroid_matches_numpy():
    rng = np.random.default_rng(4)
    points, centroids = rng.normal(size=(500, 3)), rng.normal(size=(17, 3))
    got = nearest_centroid(torch.from_numpy(points), torch.from_numpy(centroids)).numpy()
    np.testing.assert_array_equal(got, _numpy_nearest(points, centroids))


def test_kmeans_assignment_is_the_nearest_centroid_and_lloyd_lowers_the_error():
    rng = np.random.default_rng(5)
    points = np.concatenate([rng.normal(loc=c, scale=0.3, size=(100, 2)) for c in ([0, 0], [5, 0], [0, 5])])
    centroids, assignment = kmeans(torch.from_numpy(points), 3, iterations=10, seed=0)
    c, a = centroids.numpy(), assignment.numpy()
    np.testing.assert_array_equal(a, _numpy_nearest(points, c))
    # the three clusters found: each centroid near a true centre
    assert sorted(np.round(c).astype(int).tolist()) == [[0, 0], [0, 5], [5, 0]]
    err = lambda cc, aa: ((points - cc[aa]) ** 2).sum()  # noqa: E731
    c0, a0 = kmeans(torch.from_numpy(points), 3, iterations=0, seed=0)
    assert err(c, a) <= err(c0.numpy(), a0.numpy())
    c_again, a_again = kmeans(torch.from_numpy(points), 3, iterations=10, seed=0)  # seeded: the same result
    assert torch.equal(c_again, centroids) and torch.equal(a_again, assignment)


def test_kmeans_with_as_many_centroids_as_distinct_rows_is_exact():
    rng = np.random.default_rng(6)
    distinct = rng.normal(size=(7, 4))
    points = distinct[rng.integers(0, 7, size=60)]
    centroids, assignment = kmeans(torch.from_numpy(points), 9, seed=1)
    assert centroids.shape == (9, 4)
    np.testing.assert_array_equal(centroids.numpy()[assignment.numpy()], points)


def test_pq_reconstruction_is_the_codebook_rows_of_the_codes():
    rng = np.random.default_rng(7)
    weight = torch.from_numpy(rng.normal(size=(300, 8)))
    emb = PQEmbedding.from_table(weight, num_subspaces=4, num_centroids=16, iterations=3, seed=2)
    books, codes = emb.codebooks.detach().numpy(), emb.assignments.numpy().astype(np.int64)
    assert books.shape == (4, 16, 2) and codes.shape == (300, 4) and emb.assignments.dtype == torch.int16
    ids = np.array([0, 299, 17, 17])
    expected = np.concatenate([books[j][codes[ids, j]] for j in range(4)], axis=1)
    np.testing.assert_array_equal(emb(torch.from_numpy(ids)).detach().numpy(), expected)
    for j in range(4):  # each code is the nearest centroid of its sub-vector
        np.testing.assert_array_equal(codes[:, j], _numpy_nearest(weight.numpy()[:, 2 * j:2 * j + 2], books[j]))
    assert emb.stored_values == 4 * 16 * 2 + 300 * 4 == pq_stored_values(300, 8, 4, 16)


def test_pq_is_exact_with_as_many_centroids_as_rows_and_trains_only_the_codebooks():
    weight = torch.randn(40, 6, dtype=torch.float64)
    emb = PQEmbedding.from_table(weight, num_subspaces=3, num_centroids=1000)
    assert emb.num_centroids == 40  # clipped to the rows
    assert torch.equal(emb.full_table(), weight)
    assert [n for n, _ in emb.named_parameters()] == ["codebooks"] and "assignments" in emb.state_dict()
    emb(torch.tensor([3])).sum().backward()
    assert emb.codebooks.grad.count_nonzero() == 6  # one centroid per sub-space, 2 columns each


def test_pq_bad_input():
    with pytest.raises(ValueError, match="does not divide the table width 6; use one of"):
        PQEmbedding(10, 6, num_subspaces=4, num_centroids=4)
    with pytest.raises(ValueError, match="num_centroids must be a positive int"):
        PQEmbedding(10, 6, num_subspaces=2, num_centroids=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        kmeans(torch.tensor([[float("nan")], [1.0]]), 1)


# ------------------------------------------------------------------- surgery, plan replay, checkpoints

VOCAB, DIM, NUMERIC = [7, 11, 50, 90], 8, 3


def _deepfm(seed=0):
    from lightning_afm.data.schema import Schema
    from lightning_afm.models import DeepFM

    torch.manual_seed(seed)
    return DeepFM(Schema.from_vocab_sizes(VOCAB, numeric=NUMERIC), embedding_dim=DIM, mlp_hidden=[16, 12, 10],
                  dropout=0.0, embedding_init_std=0.3)


def _inputs(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, v, (n,), generator=g) for v in VOCAB], 1)
    return cat, torch.rand(n, NUMERIC, generator=g)


def _swap(model, method):
    from lightning_afm.compress import compress_embeddings_pq, compress_embeddings_qr, select_qr_tables

    names = [f"embeddings.C{i}" for i in range(1, 5)]
    if method == "qr":
        return compress_embeddings_qr(model, select_qr_tables(model, names, 4), 4, "mult", "table")
    return compress_embeddings_pq(model, names, 2, 16, iterations=3, seed=0)


@pytest.mark.parametrize("method", ["qr", "pq"])
def test_a_compressed_deepfm_replays_from_its_plan_and_loads_identically(method):
    from lightning_afm.compress import CompressionPlan, replay_plan, resolve_targets, stored_values
    from lightning_afm.compress.checkpoint import PLAN_CHECKPOINT_KEY, entry_is_applied

    model = _deepfm().eval()
    plan = CompressionPlan(_swap(model, method))
    kinds = {e.kind for e in plan}
    assert kinds == {f"{method}_embedding"} and all(e.method == method for e in plan)
    if method == "qr":  # 7 rows: ceil(7/4) + 4 = 6 < 7 saves; every table here shrinks
        assert [e.name for e in plan] == [f"embeddings.C{i}" for i in range(1, 5)]
        assert isinstance(model.embeddings.C4, QREmbedding) and model.embeddings.C4.quotient.num_embeddings == 23
    else:  # K clipped to the rows; codes count as stored values, not parameters
        assert [e.flags["num_centroids"] for e in plan] == [7, 11, 16, 16]
        assert 0 < plan.entries[3].flags["relative_error"] < 1 and plan.entries[0].flags["relative_error"] < 1e-6
        params = sum(p.numel() for p in model.parameters())
        assert stored_values(model) == params + sum(v * 2 for v in VOCAB)
    cat, num = _inputs(seed=1)
    with torch.no_grad():
        out = model(cat, num)
    fresh = _deepfm(seed=9)
    replay_plan(fresh, CompressionPlan.from_json(plan.to_json()))
    assert all(entry_is_applied(fresh, e) for e in plan)
    fresh.load_state_dict(model.state_dict())  # strict: same keys and shapes, the PQ codes included
    with torch.no_grad():
        assert torch.equal(fresh.eval()(cat, num), out)
    # the model's own hook (what Lightning's load_from_checkpoint calls) rebuilds the structure
    other = _deepfm(seed=10)
    checkpoint = {PLAN_CHECKPOINT_KEY: plan.to_dict(), "state_dict": model.state_dict()}
    other.on_load_checkpoint(checkpoint)
    other.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        assert torch.equal(other.eval()(cat, num), out)
    with pytest.raises(ValueError, match="already compressed"):
        resolve_targets(model, "embeddings.C3", "embedding")


@pytest.mark.parametrize("method", ["qr", "pq"])
def test_a_less_compressed_checkpoint_puts_the_plain_tables_back(method):
    from lightning_afm.compress.checkpoint import PLAN_CHECKPOINT_KEY, restore_compressed_structure

    plain = _deepfm(seed=3).eval()
    checkpoint = {PLAN_CHECKPOINT_KEY: {"version": 1, "entries": []}, "state_dict": plain.state_dict()}
    model = _deepfm()
    _swap(model, method)
    assert restore_compressed_structure(model, checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    assert all(type(t) is torch.nn.Embedding for t in model.embeddings.tables())


def test_table_swaps_check_everything_before_changing_anything():
    from lightning_afm.compress import compress_embeddings_pq, compress_embeddings_qr, select_qr_tables

    model = _deepfm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"'embeddings.C4': num_subspaces 3 does not divide the table width 8; use one of"):
        compress_embeddings_pq(model, ["embeddings.C4", "embeddings.C1"], 3, 4)
    with pytest.raises(ValueError, match="has no submodule 'embeddings.nope'"):
        compress_embeddings_qr(model, ["embeddings.C1", "embeddings.nope"], 2)
    with pytest.raises(ValueError, match="no table is smaller as QR tables with 60 collisions"):
        select_qr_tables(model, ["embeddings.C1", "embeddings.C3"], 60)
    with pytest.raises(ValueError, match="padding row"):
        compress_embeddings_qr(torch.nn.Sequential(torch.nn.Embedding(10, 4, padding_idx=0)), ["0"], 2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert select_qr_tables(model, [f"embeddings.C{i}" for i in range(1, 5)], 9) == ["embeddings.C3", "embeddings.C4"]  # 11 rows: 2 + 9 = 11


@pytest.mark.parametrize("method", ["qr", "pq"])
def test_the_callback_compresses_with_qr_and_pq_and_its_checkpoint_reloads(method, tmp_path, tiny_synthetic):
    import lightning.pytorch as pl

    from lightning_afm import AFMCompressionCallback, EmbeddingStage
    from lightning_afm.models import DeepFM

    pl.seed_everything(0)
    dm = tiny_synthetic()
    model = DeepFM(schema=dm.schema.to_dict(), embedding_dim=8, mlp_hidden=[16, 16, 16], lr=3e-3)
    stage = EmbeddingStage(method=method, rank=4 if method == "qr" else 2, pq_centroids=8, dropout=0.0)
    callback = AFMCompressionCallback([stage], baseline_epochs=1, progress=False)
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    wanted = QREmbedding if method == "qr" else PQEmbedding
    tables = model.embeddings.tables()
    assert all(isinstance(t, wanted) for t in tables[1:]) and not model.mlp_reads_codes  # 5 rows: QR keeps it dense
    record = callback.history[0]
    assert record["finished"] and record["params"] < record["params_before"]
    codes = sum(t.assignments.numel() for t in tables if isinstance(t, PQEmbedding))
    assert record["stored_values"] == record["params"] + codes
    ckpt = tmp_path / "compressed.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = DeepFM.load_from_checkpoint(str(ckpt)).eval()
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        assert torch.equal(loaded(batch["categorical"], batch["numeric"]),
                           model.eval()(batch["categorical"], batch["numeric"]))


def test_stage_settings_of_qr_and_pq_are_checked():
    from lightning_afm import EmbeddingStage

    with pytest.raises(ValueError, match="number of collisions, which must be >= 2"):
        EmbeddingStage(method="qr", rank=1)
    with pytest.raises(ValueError, match="qr_operation must be one of"):
        EmbeddingStage(method="qr", rank=4, qr_operation="concat")
    with pytest.raises(ValueError, match="pq_centroids must be an integer >= 1"):
        EmbeddingStage(method="pq", rank=2, pq_centroids=0)
    with pytest.raises(ValueError, match="pq tables have no projection to fold"):
        EmbeddingStage(method="pq", rank=2, fold=True)


# ------------------------------------------------------------------- the registry's view of the two kinds


@pytest.mark.parametrize("operation, init", [("mult", "random"), ("add", "table")])
def test_qr_kind_plans_what_it_builds_and_replays_it(operation, init):
    from lightning_afm.compress import get_kind

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(23, 6).double())
    kind = get_kind("qr_embedding")
    entry, new = kind.build(model, "0", None, 4, "qr", {"qr_operation": operation, "qr_init": init, "init": "svd"})
    assert (entry.kind, entry.method, entry.rank, entry.shape) == ("qr_embedding", "qr", 4, [23, 6])
    assert entry.flags == {"operation": operation, "init": init} and type(model[0]) is torch.nn.Embedding
    structure = kind.structure(entry)
    assert structure.parameters == new.num_parameters == (6 + 4) * 6
    assert structure.multiply_adds == (6 if operation == "mult" else 0)
    replayed = kind.replay(model, entry)
    assert {k: v.shape for k, v in replayed.state_dict().items()} == {k: v.shape for k, v in new.state_dict().items()}
    assert replayed.operation == operation and replayed.quotient.weight.dtype == torch.float64
    assert type(kind.plain_module("0", new, {})) is torch.nn.Embedding
    with pytest.raises(ValueError, match="qr_init must be one of"):
        kind.build(model, "0", None, 4, "qr", {"qr_init": "svd"})


def test_pq_kind_plans_what_it_builds_and_replays_it():
    from lightning_afm.compress import get_kind

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(300, 8).double())
    kind = get_kind("pq_embedding")
    options = {"pq_centroids": 16, "pq_iterations": 2, "pq_seed": 3}
    entry, new = kind.build(model, "0", None, 4, "pq", options)
    assert (entry.kind, entry.method, entry.rank, entry.flags["num_centroids"], entry.flags["seed"]) == (
        "pq_embedding", "pq", 4, 16, 3)
    expected_error = np.linalg.norm(new.full_table().detach().numpy() - model[0].weight.detach().numpy())
    assert entry.flags["relative_error"] == pytest.approx(expected_error / np.linalg.norm(model[0].weight.detach().numpy()))
    structure = kind.structure(entry)
    assert structure.parameters == new.codebooks.numel() == 16 * 8 and structure.multiply_adds == 0
    replayed = kind.replay(model, entry)
    assert {k: (v.shape, v.dtype) for k, v in replayed.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in new.state_dict().items()}
    assert kind.max_rank(model[0]) == 8 and kind.rank_problem(model[0], 4) is None
    assert "choose one of [1, 2, 4, 8]" in kind.rank_problem(model[0], 3)


def test_stage_options_reach_the_kinds_and_target_selection_is_the_kinds():
    from lightning_afm import EmbeddingStage
    from lightning_afm.compress import compress_targets, select_targets

    model = _deepfm()
    names = [f"embeddings.C{i}" for i in range(1, 5)]
    stage = EmbeddingStage(method="qr", rank=9, qr_operation="add", qr_init="table")
    chosen = select_targets(model, names, "qr", 9, **stage.build_options())
    assert chosen == ["embeddings.C3", "embeddings.C4"]  # 7 and 11 rows: ceil(s / 9) + 9 >= s
    assert select_targets(model, names, "pq", 2, **stage.build_options()) == names
    entries = compress_targets(model, chosen, None, 9, "qr", **stage.build_options())
    assert [e.flags for e in entries] == [{"operation": "add", "init": "table"}] * 2
    pq = EmbeddingStage(method="pq", rank=2, pq_centroids="8", pq_iterations=1.0, pq_seed=5)
    assert {k: pq.build_options()[k] for k in ("pq_centroids", "pq_iterations", "pq_seed")} == {
        "pq_centroids": 8, "pq_iterations": 1, "pq_seed": 5}
    entries = compress_targets(model, ["embeddings.C2"], None, 2, "pq", **pq.build_options())
    assert entries[0].flags["num_centroids"] == 8 and entries[0].flags["seed"] == 5


def test_the_callback_refuses_a_pq_rank_that_does_not_divide_the_width_before_any_training(tiny_synthetic):
    import lightning.pytorch as pl

    from lightning_afm import AFMCompressionCallback, EmbeddingStage
    from lightning_afm.models import DeepFM

    dm = tiny_synthetic()
    model = DeepFM(schema=dm.schema.to_dict(), embedding_dim=8, mlp_hidden=[16, 16, 16])
    callback = AFMCompressionCallback([EmbeddingStage(method="pq", rank=3)], baseline_epochs=1, progress=False)
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")
    with pytest.raises(ValueError, match=r"PQ cuts each row into rank=3 sub-vectors, which does not divide the width 8"):
        trainer.fit(model, datamodule=dm)
    assert trainer.current_epoch == 0 and callback.history == []


def test_pq_target_selection_checks_every_table_first():
    from lightning_afm.compress import select_targets

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Embedding(10, 4, max_norm=1.0))
    assert select_targets(model, ["0"], "pq", 2) == ["0"]
    with pytest.raises(ValueError, match=r"'1' renormalises rows \(max_norm=1.0\), which a PQ table does not do"):
        select_targets(model, ["0", "1"], "pq", 2)
