"""The DataModules: batches, coverage, reshuffling, batch-size changes, DDP shards, Lightning integration."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lightning_afm.data import (
    CSVDataModule,
    CriteoDataModule,
    CTRDataModule,
    EncodedSplit,
    Schema,
    SyntheticDataModule,
    batch_plan,
    num_batches,
)
from lightning_afm.data.batching import BatchStream
from lightning_afm.data.synthetic import write_criteo_format


class RowIdModule(CTRDataModule):
    """Rows whose single categorical value is their own index: batches tell which rows they hold."""

    def __init__(self, rows=(103, 0, 17), **kwargs):
        super().__init__(**kwargs)
        self.rows = dict(zip(("train", "val", "test"), rows))

    def _load(self):
        splits = {}
        for name, n in self.rows.items():
            ids = np.arange(n, dtype=np.int32).reshape(n, 1)
            splits[name] = EncodedSplit(ids, np.zeros((n, 2), np.float32), (np.arange(n) % 2).astype(np.float32))
        return Schema.from_vocab_sizes([max(self.rows.values()) + 1], numeric=2), splits


def _ids(loader) -> list[np.ndarray]:
    return [b["categorical"][:, 0].numpy() for b in loader]


def _fake_trainer(epoch=0, rank=0, world=1):
    return SimpleNamespace(current_epoch=epoch, global_rank=rank, world_size=world)


def test_batches_shapes_dtypes_and_full_coverage():
    dm = RowIdModule(batch_size=10, seed=1)
    dm.prepare_data()
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.batch_size is None and len(loader) == 11
    batches = list(loader)
    assert len(batches) == 11
    for b in batches:
        assert set(b) == {"categorical", "numeric", "label"}
        assert b["categorical"].dtype == torch.int64 and b["numeric"].dtype == torch.float32 and b["label"].dtype == torch.float32
        assert b["categorical"].shape[1] == 1 and b["numeric"].shape[1] == 2 and b["label"].shape == (b["categorical"].shape[0],)
    assert [len(b["label"]) for b in batches] == [10] * 10 + [3]
    ids = np.concatenate(_ids(batches))
    assert sorted(ids.tolist()) == list(range(103))  # every row exactly once
    assert ids.tolist() != list(range(103))  # shuffled


def test_reshuffles_every_epoch_deterministically():
    dm = RowIdModule(batch_size=25, seed=3)
    dm.setup()
    loader = dm.train_dataloader()
    first, second = np.concatenate(_ids(loader)), np.concatenate(_ids(loader))
    assert sorted(first) == sorted(second) and not np.array_equal(first, second)
    again = RowIdModule(batch_size=25, seed=3)
    again.setup()
    assert np.array_equal(np.concatenate(_ids(again.train_dataloader())), first)
    # with a trainer attached, the order follows the trainer's epoch
    dm.trainer = _fake_trainer(epoch=1)
    assert np.array_equal(np.concatenate(_ids(dm.train_dataloader())), second)
    dm.trainer = _fake_trainer(epoch=7)
    expected = np.concatenate([np.sort(p) for p in batch_plan(103, 25, shuffle=True, seed=3, epoch=7)])
    assert np.array_equal(np.concatenate(_ids(dm.train_dataloader())), expected)


def test_batch_size_change_takes_effect():
    dm = RowIdModule(batch_size=50)
    dm.setup()
    loader = dm.train_dataloader()
    assert len(loader) == 3
    dm.batch_size = 7
    assert len(loader) == 15 and max(len(b) for b in _ids(loader)) == 7  # read at every iteration
    assert len(dm.train_dataloader()) == 15


def test_eval_loaders_and_statistics_loader_in_order():
    dm = RowIdModule(rows=(103, 9, 17), batch_size=10, eval_batch_size=4)
    dm.setup()
    assert np.concatenate(_ids(dm.test_dataloader())).tolist() == list(range(17))
    assert np.concatenate(_ids(dm.val_dataloader())).tolist() == list(range(9))
    assert np.concatenate(_ids(dm.predict_dataloader())).tolist() == list(range(17))
    stats = dm.statistics_dataloader()
    assert len(stats) == 26 and np.concatenate(_ids(stats)).tolist() == list(range(103))
    assert len(dm.statistics_dataloader(batch_size=1000)) == 1


def test_no_validation_split_means_no_val_loader():
    dm = RowIdModule(rows=(10, 0, 5))
    dm.setup()
    assert dm.val_dataloader() == []


@pytest.mark.parametrize("world", [2, 3, 4, 7])
@pytest.mark.parametrize("shuffle", [True, False])
def test_ddp_shards_are_disjoint_complete_and_equal_length(world, shuffle):
    n, batch = 103, 10
    dm = RowIdModule(rows=(n, 0, n), batch_size=batch, shuffle=shuffle)
    dm.setup()
    seen, lengths = [], set()
    for rank in range(world):
        dm.trainer = _fake_trainer(epoch=2, rank=rank, world=world)
        for loader in (dm.train_dataloader(), dm.statistics_dataloader(batch_size=batch), dm.test_dataloader()):
            batches = _ids(loader)
            assert len(batches) == len(loader) and all(0 < len(b) <= batch for b in batches)
        batches = _ids(dm.train_dataloader())
        lengths.add(len(batches))
        seen.append(np.concatenate(batches))
    assert len(lengths) == 1  # every rank yields the same number of batches: DDP never waits forever
    all_rows = np.concatenate(seen)
    assert sorted(all_rows.tolist()) == list(range(n))  # disjoint and complete: no padding duplicates


def test_batch_plan_edge_cases():
    # batch size 1 with uneven shards: the smaller shard sets the count, no empty batch
    plans = [batch_plan(5, 1, rank=r, world_size=2, shuffle=True) for r in range(2)]
    assert [len(p) for p in plans] == [2, 2] and all(len(b) > 0 for p in plans for b in p)
    assert sorted(np.concatenate([np.concatenate(p) for p in plans]).tolist()) == list(range(5))
    assert num_batches(0, 10) == 0 and batch_plan(0, 10) == []
    with pytest.raises(ValueError, match="cannot give each"):
        num_batches(3, 10, world_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        num_batches(10, 0)


def test_batch_from_slice_equals_batch_from_indices(tmp_path):
    rng = np.random.default_rng(0)
    cat, num, lab = rng.integers(0, 9, (50, 3)).astype(np.int32), rng.random((50, 2)).astype(np.float32), rng.random(50).astype(np.float32)
    for name, a in (("c", cat), ("n", num), ("l", lab)):
        np.save(tmp_path / f"{name}.npy", a)
    split = EncodedSplit(*(np.load(tmp_path / f"{n}.npy", mmap_mode="r") for n in "cnl"))
    a, b = split.batch(slice(10, 20)), split.batch(np.arange(10, 20))
    for k in a:
        assert torch.equal(a[k], b[k])
    a["numeric"] += 1  # batches are writable copies, not views of the read-only memory map


def test_stream_refuses_worker_processes():
    stream = BatchStream(EncodedSplit.empty(1, 0), 4)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=1)
    with pytest.raises(Exception, match="num_workers=0"):
        list(loader)


class _TinyModel(pl.LightningModule):
    """Sum of per-value weights: enough to run Lightning's loops over the DataModule."""

    def __init__(self, vocab: int):
        super().__init__()
        self.weights = torch.nn.Embedding(vocab, 1)
        self.first_rows, self.batch_sizes, self.val_batches = [], [], 0

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.first_rows.append(batch["categorical"][:, 0].tolist())
        self.batch_sizes.append(len(batch["label"]))
        logit = self.weights(batch["categorical"]).sum(dim=(1, 2))
        return torch.nn.functional.binary_cross_entropy_with_logits(logit, batch["label"])

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _ChangeBatchSize(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.datamodule.batch_size = 20


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip


def test_lightning_fit_reshuffles_reloads_and_skips_missing_validation():
    dm = RowIdModule(rows=(60, 0, 10), batch_size=10, seed=5)
    model = _TinyModel(61)
    _trainer(max_epochs=3, reload_dataloaders_every_n_epochs=1, callbacks=[_ChangeBatchSize()]).fit(model, datamodule=dm)
    assert model.val_batches == 0  # val_fraction 0: no validation loop
    assert len(model.first_rows) == 3 and model.first_rows[0] != model.first_rows[1] != model.first_rows[2]
    assert model.batch_sizes[:6] == [10] * 6 and model.batch_sizes[6:] == [20] * 6  # reloaded with the new size
    expected = np.sort(batch_plan(60, 10, shuffle=True, seed=5, epoch=0)[0]).tolist()
    assert model.first_rows[0] == expected  # epoch 0 of the trainer drives the order


def test_lightning_fit_with_validation_split():
    dm = SyntheticDataModule(num_rows=3000, vocab_sizes=[5, 50], num_numeric=2, batch_size=500, eval_batch_size=1000)
    dm.prepare_data()
    dm.setup()  # the application builds the model from the schema before fit
    model = _TinyModel(max(dm.schema.vocab_sizes))
    _trainer(max_epochs=1).fit(model, datamodule=dm)
    assert model.val_batches == 1 and dm.num_rows("val") == 300 and dm.num_rows("test") == 300


def test_synthetic_module_encodes_like_files():
    dm = SyntheticDataModule(num_rows=20_000, vocab_sizes=[3, 40, 2000], num_numeric=3, min_count=2, seed=9)
    dm.setup()
    schema = dm.schema
    assert schema.categorical_names == ["C1", "C2", "C3"] and schema.numeric == ("I1", "I2", "I3")
    train, test = dm.split("train"), dm.split("test")
    for f, vocab in enumerate(schema.vocab_sizes):
        assert train.categorical[:, f].max() == vocab - 1 and train.categorical[:, f].min() >= 0
    assert (test.categorical[:, 2] == 0).any()  # rare and unseen values -> OOV
    assert train.numeric.min() == 0.0 and train.numeric.max() == 1.0
    assert 0.75 < dm.ground_truth_auc("test") < 0.86
    with pytest.raises(RuntimeError, match="setup"):
        SyntheticDataModule(num_rows=100).split("train")


@pytest.fixture(scope="module")
def criteo_file(tmp_path_factory):
    return write_criteo_format(tmp_path_factory.mktemp("criteo") / "train.txt", 3000, seed=4)


def test_criteo_module_prepares_then_memory_maps(criteo_file, tmp_path):
    dm = CriteoDataModule(criteo_file, cache_dir=tmp_path, progress=False)
    dm.prepare_data()
    assert not dm.preprocess_result.reused
    dm.setup()
    assert dm.schema.num_categorical == 26 and dm.schema.num_numeric == 13
    assert isinstance(dm.split("train").categorical, np.memmap)
    assert dm.num_rows("train") == 2700 and dm.num_rows("test") == 300 and dm.val_dataloader() == []
    b = next(iter(dm.train_dataloader()))
    assert b["categorical"].shape == (1000, 26) and b["numeric"].shape == (1000, 13)
    assert (b["categorical"] < torch.tensor(dm.schema.vocab_sizes)).all()
    # another process (a DDP rank) calling setup() alone finds the cache
    other = CriteoDataModule(criteo_file, cache_dir=tmp_path, progress=False)
    other.setup()
    assert other.preprocess_result.reused and other.schema == dm.schema


def test_csv_module_reads_parquet(tmp_path):
    n = 400
    rng = np.random.default_rng(0)
    table = pa.table({"y": rng.integers(0, 2, n), "site": rng.choice(["a", "b", "c"], n), "price": rng.random(n)})
    pq.write_table(table, tmp_path / "t.parquet")
    dm = CSVDataModule(tmp_path / "t.parquet", label="y", categorical=["site"], numeric=["price"], cache_dir=tmp_path / "c", batch_size=64, progress=False)
    dm.prepare_data()
    dm.setup()
    assert dm.schema.vocab_sizes == [4] and dm.schema.numeric == ("price",)
    assert sum(len(b["label"]) for b in dm.train_dataloader()) == 360
    assert dm.name == "parquet"  # summaries name the format the run read


def test_data_report_lists_skipped_rows_also_when_the_cache_is_reused(tmp_path):
    """``data_report()`` is what the app writes into summary.json; it is read from the cache, so a rerun reports the same."""
    lines = ["click,site,price"] + [f"{i % 2},s{i % 3},{i}" for i in range(200)]
    lines[20] = "1,s1"  # line 21: too few columns
    lines[70] = "1,s1,cheap"  # line 71: not a number
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")

    def module():
        return CSVDataModule(tmp_path / "t.csv", label="click", categorical=["site"], numeric=["price"], cache_dir=tmp_path / "c", on_bad_rows="skip", progress=False)

    first = module()
    first.prepare_data()
    report = first.data_report()
    assert report["cache_reused"] is False and report["rows_skipped"] == 2 and report["rows_encoded"] == 198
    assert report["skipped"]["by_reason"] == {"wrong number of columns": 1, "price: not a finite number": 1}
    assert report["skipped"]["first"] == [
        {"line": 21, "column": None, "reason": "expected 3 columns, found 2"},
        {"line": 71, "column": "price", "reason": "not a finite number, got 'cheap'"},
    ]
    assert report["split_rows"] == {"train": 178, "val": 0, "test": 20}
    again = module()
    again.setup()  # a rerun, or another DDP rank: the cache is reused
    reused = again.data_report()
    assert reused["cache_reused"] is True
    assert {k: v for k, v in reused.items() if k != "cache_reused"} == {k: v for k, v in report.items() if k != "cache_reused"}
    import json

    json.dumps(reused)  # plain JSON types
    synthetic = SyntheticDataModule(num_rows=500, vocab_sizes=(5, 7), num_numeric=1)
    synthetic.setup()
    assert synthetic.data_report()["rows_skipped"] == 0 and synthetic.data_report()["rows_encoded"] == 500


def test_csv_module_checks_columns_at_construction(tmp_path):
    (tmp_path / "t.csv").write_text("click,site\n1,a\n")
    with pytest.raises(Exception, match="not found"):
        CSVDataModule(tmp_path / "t.csv", label="click", categorical=["nope"], cache_dir=tmp_path).prepare_data()
    with pytest.raises(Exception, match="path"):
        CriteoDataModule("???")


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank of a real 2-process gloo group: iterate the shard, all_reduce after every batch."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        dm = RowIdModule(rows=(101, 0, 13), batch_size=10, seed=4)
        dm.setup()
        seen = []
        for loader in (dm.train_dataloader(), dm.statistics_dataloader(), dm.test_dataloader()):
            for batch in loader:
                seen.append(batch["categorical"][:, 0].numpy())
                dist.all_reduce(torch.ones(1))  # unequal batch counts would leave one rank waiting here
        np.save(f"{out_dir}/rank{rank}.npy", np.concatenate(seen))
    finally:
        dist.destroy_process_group()


def test_real_ddp_group_gets_disjoint_shards(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children need not import torch and Lightning again (seconds each)
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    rank0, rank1 = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    # train + statistics + test passes: each covers its split once over both ranks
    combined = sorted(np.concatenate([rank0, rank1]).tolist())
    assert combined == sorted(list(range(101)) * 2 + list(range(13)))
    assert len(rank0) == 51 + 51 + 7 and len(rank1) == 50 + 50 + 6  # array_split shards: no padding rows


def test_split_seed_redraws_the_split_of_the_same_synthetic_table():
    """Table 13 divides one dataset with several seeds: ``split_seed`` changes which rows test, not the rows."""
    def module(**kw):
        dm = SyntheticDataModule(num_rows=3000, vocab_sizes=[5, 40], num_numeric=1, batch_size=500, seed=3, **kw)
        dm.prepare_data()
        dm.setup()
        return dm

    same, other = module(), module(split_seed=4)
    assert module(split_seed=3).split("test").label.tolist() == same.split("test").label.tolist()
    assert other.split("test").categorical.tolist() != same.split("test").categorical.tolist()
    # the same table (its rows' true logits), divided differently; ids differ as vocabularies come from train
    pooled = lambda dm: np.sort(np.concatenate([dm.true_logit[s] for s in ("train", "val", "test")]))
    assert np.array_equal(pooled(other), pooled(same))
