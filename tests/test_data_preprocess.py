"""Encoding rules (vocabulary, min_count, OOV, min-max, log buckets), the split, and the cache."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_afm.data import pipeline as preprocess_module
from lightning_afm.data.cache import remove_stale_builds
from lightning_afm.data.pipeline import EncodeOptions, preprocess
from lightning_afm.data.readers import criteo_source, table_source
from lightning_afm.data.split import TEST, TRAIN, VAL, split_assignment
from lightning_afm.data.synthetic import write_criteo_format
from lightning_afm.data.vocab import build_vocab, load_vocab, vocab_path


def _arrays(result, split: str) -> dict[str, np.ndarray]:
    return {a: np.load(result.path / split / f"{a}.npy") for a in ("categorical", "numeric", "label")}


def _vocab(result, field: str) -> dict:
    t = load_vocab(vocab_path(result.path, field)).to_pydict()
    return {v: i for i, v in zip(t["id"], t["value"]) if i != 0}


def _write_csv(path: Path, header: list[str], rows: list[list[object]], sep: str = ",") -> Path:
    lines = [sep.join(header)] + [sep.join("" if v is None else str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def crafted(tmp_path):
    """40 rows: split 30/10 (seed 7); known value counts in the training rows."""
    n = 40
    assignment = split_assignment(n, 0.25, 0.0, seed=7)
    train_values = iter(["p"] * 15 + ["q"] * 10 + ["r"] * 4 + [None])  # 30 training rows; None = missing
    rows = []
    for i in range(n):
        if assignment[i] == TRAIN:
            a = next(train_values)
            x = None if i % 7 == 0 else float(i)
        else:
            a = "p" if i % 2 else "s"  # "s" never appears in training
            x = 1000.0 if i % 3 == 0 else -50.0  # outside the training range: clipped
        rows.append([i % 2, a, x, i])
    path = _write_csv(tmp_path / "t.csv", ["click", "a", "x", "rowid"], rows)
    return path, assignment, rows


def test_vocab_min_count_oov_and_missing(crafted, tmp_path):
    path, assignment, rows = crafted
    for min_count, expected_kept in ((1, {"p", "q", "r", ""}), (5, {"p", "q", ""}), (11, {"p", ""})):
        result = preprocess(
            table_source(path, "click", ["a"], ["x"]), EncodeOptions(min_count=min_count, test_fraction=0.25, seed=7), tmp_path / "c", progress=False
        )
        vocab = _vocab(result, "a")
        # the missing value (1 training row) is kept whatever min_count: it never shares the OOV row
        assert set(vocab) == expected_kept
        assert result.schema.vocab_sizes == [len(expected_kept) + 1]
        assert vocab["p"] == 1  # most frequent first
        for s, split in ((TRAIN, "train"), (TEST, "test")):
            raw = [r[1] if r[1] is not None else "" for r, a in zip(rows, assignment) if a == s]
            assert _arrays(result, split)["categorical"][:, 0].tolist() == [vocab.get(v, 0) for v in raw]
        oov = result.schema.extra["oov_train_occurrences"][0]
        assert oov == {1: 0, 5: 4, 11: 14}[min_count]  # r (4) and q (10) below the threshold
        assert load_vocab(vocab_path(result.path, "a")).to_pydict()["count"][0] == oov


def test_minmax_from_training_split_with_clipping(crafted, tmp_path):
    path, assignment, rows = crafted
    result = preprocess(table_source(path, "click", ["a"], ["x", "rowid"]), EncodeOptions(test_fraction=0.25, seed=7), tmp_path, progress=False)
    x = np.array([r[2] if r[2] is not None else 0.0 for r in rows], dtype=np.float64)  # missing -> 0 first
    low, high = x[assignment == TRAIN].min(), x[assignment == TRAIN].max()
    expected = np.clip((x - low) / (high - low), 0, 1)
    got_train = _arrays(result, "train")["numeric"][:, 0]
    got_test = _arrays(result, "test")["numeric"][:, 0]
    np.testing.assert_allclose(got_train, expected[assignment == TRAIN], atol=1e-7)
    np.testing.assert_allclose(got_test, expected[assignment == TEST], atol=1e-7)
    assert set(np.unique(got_test)) <= {0.0, 1.0}  # the test values lie outside the training range
    assert got_train.min() == 0.0 and got_train.max() == 1.0


def test_constant_and_all_missing_numeric_columns_scale_to_zero(tmp_path):
    rows = [[i % 2, "a", 5, None] for i in range(20)]
    path = _write_csv(tmp_path / "c.csv", ["y", "k", "const", "empty"], rows)
    result = preprocess(table_source(path, "y", ["k"], ["const", "empty"]), EncodeOptions(), tmp_path / "c", progress=False)
    for split in ("train", "test"):
        assert not _arrays(result, split)["numeric"].any()


def test_log_buckets(tmp_path):
    values = [None, -3, 0, 1, 2, 3, 100, 100, 7]
    rows = [[i % 2, "k", v] for i, v in enumerate(values)]
    path = _write_csv(tmp_path / "b.csv", ["y", "k", "x"], rows)
    result = preprocess(table_source(path, "y", ["k"], ["x"]), EncodeOptions(log_buckets=True, test_fraction=0.0), tmp_path / "c", progress=False)
    assert result.schema.categorical_names == ["k", "x_bucket"] and result.schema.numeric == ("x",)
    vocab = _vocab(result, "x_bucket")
    # x > 2 -> floor(log(x)^2): 3 -> 1, 7 -> 3, 100 -> 21; smaller values stay; missing is a token
    expected = ["", "-3", "0", "1", "2", "1", "21", "21", "3"]
    assert _arrays(result, "train")["categorical"][:, 1].tolist() == [vocab[v] for v in expected]
    assert result.schema.vocab_sizes[1] == len(set(expected)) + 1


def test_build_vocab_reference():
    counts = np.array([3, 0, 7, 3, 1, 9])
    remap, kept = build_vocab(counts, min_count=2, missing_id=4)
    # kept by count desc, ties by provisional id: 5 (9), 2 (7), 0 (3), 3 (3), 4 (missing, kept anyway)
    assert kept.tolist() == [5, 2, 0, 3, 4]
    assert remap.tolist() == [3, 0, 2, 4, 5, 1]
    with pytest.raises(ValueError, match="min_count"):
        build_vocab(counts, min_count=0)


def test_split_is_deterministic_disjoint_and_sized():
    a = split_assignment(1001, 0.1, 0.05, seed=2020)
    assert np.array_equal(a, split_assignment(1001, 0.1, 0.05, seed=2020))
    assert not np.array_equal(a, split_assignment(1001, 0.1, 0.05, seed=2021))
    assert [(a == s).sum() for s in (TRAIN, VAL, TEST)] == [849, 51, 101]  # ceil for test and val
    # asking for a validation split leaves the test split unchanged
    assert np.array_equal(split_assignment(1001, 0.1, 0.0, 2020) == TEST, a == TEST)


def test_split_matches_sklearn_train_test_split():
    sklearn = pytest.importorskip("sklearn.model_selection")
    for n, frac in ((10_000, 0.1), (2_994, 0.2), (7, 0.2)):
        _, test_rows = sklearn.train_test_split(np.arange(n), test_size=frac, random_state=2020)
        assert set(np.flatnonzero(split_assignment(n, frac, 0.0, 2020) == TEST)) == set(test_rows)


def test_split_rejects_bad_fractions():
    for bad in ((1.0, 0.0), (-0.1, 0.0), (0.5, 0.5)):
        with pytest.raises(ValueError):
            split_assignment(10, *bad)


def test_chunking_and_spilling_do_not_change_the_result(tmp_path, monkeypatch):
    """Many small chunks (dictionaries grown across them), and rows spilled to disk and fixed up in
    place rather than held in memory, give exactly the one-chunk in-memory encoding."""
    path = write_criteo_format(tmp_path / "train.txt", 6000, seed=3)
    options = EncodeOptions(min_count=2, log_buckets=True, val_fraction=0.1)
    whole = preprocess(criteo_source(path), options, tmp_path / "a", progress=False)
    pieces = preprocess(criteo_source(path, block_size=1 << 14, chunk_rows=300), options, tmp_path / "b", progress=False)
    monkeypatch.setattr(preprocess_module, "HELD_BYTES", 50_000)  # the first chunks held, the rest on disk
    spilled = preprocess(criteo_source(path, block_size=1 << 14, chunk_rows=300), options, tmp_path / "c", progress=False)
    for other in (pieces, spilled):
        assert whole.schema.to_dict()["categorical"] == other.schema.to_dict()["categorical"]
        for split in ("train", "val", "test"):
            for name, array in _arrays(whole, split).items():
                np.testing.assert_array_equal(array, _arrays(other, split)[name])
        for field in ("C3", "C12", "I5_bucket"):
            assert load_vocab(vocab_path(whole.path, field)).equals(load_vocab(vocab_path(other.path, field)))


def test_parquet_and_csv_give_the_same_arrays(crafted, tmp_path):
    path, _, _ = crafted
    table = pa.csv.read_csv(path, convert_options=pa.csv.ConvertOptions(column_types={"a": pa.string()}))
    pq.write_table(table, tmp_path / "t.parquet")
    options = EncodeOptions(test_fraction=0.25, seed=7)
    from_csv = preprocess(table_source(path, "click", ["a"], ["x"]), options, tmp_path / "c1", progress=False)
    from_parquet = preprocess(table_source(tmp_path / "t.parquet", "click", ["a"], ["x"]), options, tmp_path / "c2", progress=False)
    assert from_parquet.schema.extra["source"] == "parquet"
    for split in ("train", "test"):
        for name, array in _arrays(from_csv, split).items():
            np.testing.assert_array_equal(array, _arrays(from_parquet, split)[name])


def test_parquet_with_typed_columns(tmp_path):
    n = 50
    table = pa.table(
        {
            "y": pa.array([i % 3 == 0 for i in range(n)]),
            "city": pa.array([i % 4 for i in range(n)], pa.int64()),
            "price": pa.array([float(i) if i % 5 else None for i in range(n)]),
        }
    )
    pq.write_table(table, tmp_path / "typed.parquet")
    result = preprocess(table_source(tmp_path / "typed.parquet", "y", ["city"], ["price"]), EncodeOptions(test_fraction=0.0), tmp_path / "c", progress=False)
    arrays = _arrays(result, "train")
    assert arrays["label"].sum() == sum(i % 3 == 0 for i in range(n))
    assert result.schema.vocab_sizes == [5] and set(_vocab(result, "city")) == {"0", "1", "2", "3"}
    np.testing.assert_allclose(arrays["numeric"][:, 0], [(i if i % 5 else 0) / 49 for i in range(n)], atol=1e-7)


def test_cache_is_reused_and_invalidated(crafted, tmp_path, caplog):
    path, _, _ = crafted
    cache = tmp_path / "cache"
    source = lambda: table_source(path, "click", ["a"], ["x"])  # noqa: E731
    first = preprocess(source(), EncodeOptions(), cache, progress=False)
    assert not first.reused
    with caplog.at_level(logging.INFO, logger="lightning_afm.data.pipeline"):
        again = preprocess(source(), EncodeOptions(), cache, progress=False)
    assert again.reused and again.path == first.path
    assert any("reusing the encoded cache" in r.getMessage() for r in caplog.records)
    other = preprocess(source(), EncodeOptions(min_count=3), cache, progress=False)
    assert not other.reused and other.path != first.path
    # a changed file (size and mtime) is a new key
    with open(path, "a") as f:
        f.write("1,p,3.0,99\n")
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    changed = preprocess(source(), EncodeOptions(), cache, progress=False)
    assert not changed.reused and changed.path != first.path
    assert sum(changed.schema.extra["rows"].values()) == 41


def test_file_replaced_with_size_and_mtime_kept_is_not_served_from_the_old_cache(tmp_path):
    """``cp -p`` / ``rsync -t`` / ``tar x`` keep size and mtime: the content fingerprint tells the files apart."""
    rows = [[i % 2, f"s{i % 5}", i] for i in range(300)]
    path = _write_csv(tmp_path / "t.csv", ["click", "site", "x"], rows)
    cache = tmp_path / "cache"
    source = lambda: table_source(path, "click", ["site"], ["x"])  # noqa: E731
    first = preprocess(source(), EncodeOptions(test_fraction=0.0), cache, progress=False)
    st = path.stat()
    # Same length, other labels and sites, then size and mtime put back as `cp -p` would.
    swapped = [[1 - r[0], f"t{i % 5}", r[2]] for i, r in enumerate(rows)]
    _write_csv(path, ["click", "site", "x"], swapped)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second = preprocess(source(), EncodeOptions(test_fraction=0.0), cache, progress=False)
    assert not second.reused and second.path != first.path
    assert _arrays(second, "train")["label"].tolist() == [float(r[0]) for r in swapped]
    assert set(_vocab(second, "site")) == {f"t{k}" for k in range(5)}
    assert preprocess(source(), EncodeOptions(test_fraction=0.0), cache, progress=False).reused  # unchanged: reused


def test_content_fingerprint_samples_large_files(tmp_path):
    from lightning_afm.data.cache import content_fingerprint

    path = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes())
    path.write_bytes(data)
    small_blocks = dict(blocks=8, block_size=4096)  # 40 KiB sampled of 3 MiB
    base = content_fingerprint(path, **small_blocks)
    assert base == content_fingerprint(path, **small_blocks) and len(base) == 32
    for where in (0, len(data) - 1, (len(data) - 4096) * 3 // 9 + 100):  # first, last, inside the 3rd sampled block
        changed = bytearray(data)
        changed[where] ^= 1
        path.write_bytes(changed)
        assert content_fingerprint(path, **small_blocks) != base
    changed = bytearray(data)
    changed[len(data) // 2 + 20000] ^= 1  # between sampled blocks: the documented blind spot
    path.write_bytes(changed)
    assert content_fingerprint(path, **small_blocks) == base
    assert content_fingerprint(path) != base  # the default samples more than the file holds: hashed whole


def test_interrupted_build_leaves_no_cache(crafted, tmp_path, monkeypatch):
    path, _, _ = crafted
    cache = tmp_path / "cache"

    def broken(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C while vocabularies were written

    monkeypatch.setattr(preprocess_module, "save_vocab", broken)
    with pytest.raises(KeyboardInterrupt):
        preprocess(table_source(path, "click", ["a"], ["x"]), EncodeOptions(), cache, progress=False)
    assert list(cache.iterdir()) == []  # neither a final nor a temporary directory
    monkeypatch.undo()
    result = preprocess(table_source(path, "click", ["a"], ["x"]), EncodeOptions(), cache, progress=False)
    assert not result.reused and [p.name for p in cache.iterdir()] == [result.path.name]


def test_stale_temporary_directory_is_removed(crafted, tmp_path):
    """An unlocked build (its process died) is removed; so is a lockless one (an older version's) once a day old.

    Changed deliberately with the lock files: a lockless directory used to be removed by a PID check at once.
    """
    path, _, _ = crafted
    cache = tmp_path / "cache"
    source = table_source(path, "click", ["a"], ["x"])
    final = preprocess_module.cache_path(source, EncodeOptions(), cache)
    dead = cache / f"{final.name}.tmp-123-deadbeef"  # its builder died: the lock file is left, unlocked
    dead.mkdir(parents=True)
    (cache / f"{dead.name}.lock").write_text("")
    old = cache / f"{final.name}.tmp-999999999-0ldc0de0"  # written by an older version, two days ago
    old.mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    preprocess(source, EncodeOptions(), cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == [final.name]


_HOLD_BUILD = """
import sys, time
from pathlib import Path
from lightning_afm.data.cache import _build_lock
tmp = Path(sys.argv[1])
with _build_lock(tmp):
    tmp.mkdir()
    (tmp / "half.npy").write_bytes(b"x")
    print("building", flush=True)
    time.sleep(60)
"""


def test_live_build_in_another_process_is_not_removed(crafted, tmp_path):
    """A build whose PID means nothing here (another PID namespace) but which holds its lock is left alone."""
    import subprocess
    import sys

    path, _, _ = crafted
    cache = tmp_path / "cache"
    source = table_source(path, "click", ["a"], ["x"])
    final = preprocess_module.cache_path(source, EncodeOptions(), cache)
    cache.mkdir()
    live = cache / f"{final.name}.tmp-999999999-11ve0000"  # no such PID in this namespace
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_BUILD, str(live)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "building"
        result = preprocess(source, EncodeOptions(), cache, progress=False)
        assert not result.reused and (live / "half.npy").is_file()  # the live build survived ours
        assert remove_stale_builds(final) == [] and live.is_dir()
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: the next build clears its directory and lock file
    assert remove_stale_builds(final) == [live]
    assert sorted(p.name for p in cache.iterdir()) == [final.name]


def test_stats_and_schema_extras(crafted, tmp_path):
    path, assignment, _ = crafted
    result = preprocess(table_source(path, "click", ["a"], ["x"]), EncodeOptions(test_fraction=0.25, seed=7), tmp_path, progress=False)
    assert result.stats["rows_read"] == 40 and result.stats["rows_skipped"] == 0
    assert result.schema.extra["rows"] == {"train": 30, "val": 0, "test": 10}
    assert result.schema.extra["bad_rows"]["total"] == 0
    assert (result.path / "schema.json").is_file() and (result.path / "stats.json").is_file()


def test_gzipped_csv_reads_like_the_plain_file(crafted, tmp_path):
    import gzip
    import shutil

    path, _, _ = crafted
    with open(path, "rb") as src, gzip.open(tmp_path / "t.csv.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    options = EncodeOptions(test_fraction=0.25, seed=7)
    plain = preprocess(table_source(path, "click", ["a"], ["x"]), options, tmp_path / "c1", progress=False)
    zipped = preprocess(table_source(tmp_path / "t.csv.gz", "click", ["a"], ["x"]), options, tmp_path / "c2", progress=False)
    assert zipped.stats["rows_counted"] == 40
    for split in ("train", "test"):
        for name, array in _arrays(plain, split).items():
            np.testing.assert_array_equal(array, _arrays(zipped, split)[name])


def test_parquet_dictionary_column_with_a_dictionary_per_row_group(tmp_path):
    """Categorical (dictionary) columns, as pandas writes them, may carry a different dictionary per row group."""
    first = pa.table({"y": [0, 1, 0], "site": pa.array(["a", "b", "a"]).dictionary_encode()})
    second = pa.table({"y": [1, 1], "site": pa.array(["c", "a"]).dictionary_encode()})
    with pq.ParquetWriter(tmp_path / "d.parquet", first.schema) as writer:
        writer.write_table(first)
        writer.write_table(second)
    result = preprocess(
        table_source(tmp_path / "d.parquet", "y", ["site"], chunk_rows=2), EncodeOptions(test_fraction=0.0), tmp_path / "c", progress=False
    )
    vocab = _vocab(result, "site")
    assert vocab == {"a": 1, "b": 2, "c": 3}
    assert _arrays(result, "train")["categorical"][:, 0].tolist() == [1, 2, 1, 3, 1]


def _make_read_only(directory: Path):
    """chmod 555; as root (which ignores modes) also the immutable attribute. Returns the undo, or skips."""
    import subprocess

    directory.chmod(0o555)
    undo = [lambda: directory.chmod(0o755)]
    probe = directory / ".probe"
    try:
        probe.touch()
    except OSError:
        return lambda: [u() for u in undo]
    probe.unlink()
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        directory.chmod(0o755)
        pytest.skip("cannot make a directory read-only here (root without chattr)")
    undo.insert(0, lambda: subprocess.run(["chattr", "-i", str(directory)], check=True))
    return lambda: [u() for u in undo]


def test_read_only_cache_directory_says_what_to_do(crafted, tmp_path):
    from lightning_afm.data.errors import CacheError

    path, _, _ = crafted
    cache = tmp_path / "cache"
    cache.mkdir()
    undo = _make_read_only(cache)
    try:
        with pytest.raises(CacheError, match=rf"cannot write the encoded cache in {cache}.*data.cache_dir.*writable"):
            preprocess(table_source(path, "click", ["a"], ["x"]), EncodeOptions(), cache, progress=False)
    finally:
        undo()
    assert list(cache.iterdir()) == []


def test_full_disk_says_what_to_do_and_leaves_nothing(crafted, tmp_path, monkeypatch):
    import errno

    from lightning_afm.data import cache as cache_module
    from lightning_afm.data.errors import CacheError

    path, _, _ = crafted
    cache = tmp_path / "cache"

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.NpyAppender, "finish", full)
    with pytest.raises(CacheError, match=r"no space left to write the encoded cache.*GiB free.*larger disk"):
        preprocess(table_source(path, "click", ["a"], ["x"]), EncodeOptions(), cache, progress=False)
    assert list(cache.iterdir()) == []  # no partial directory, no lock file


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda d: (d / "schema.json").unlink(), "schema.json is missing"),
        (lambda d: (d / "stats.json").write_text("{"), "stats.json is unreadable"),
        (lambda d: os.truncate(d / "train" / "categorical.npy", (d / "train" / "categorical.npy").stat().st_size - 4), "truncated"),
        (lambda d: os.truncate(d / "val" / "numeric.npy", 100), "no readable header"),
        (lambda d: (d / "test" / "label.npy").unlink(), "test/label.npy is missing"),
    ],
)
def test_damaged_cache_is_rebuilt_cleanly(crafted, tmp_path, caplog, damage, problem):
    """A cache without schema.json used to be rebuilt and then crash on every rerun; a truncated .npy was memory-mapped."""
    path, _, _ = crafted
    cache = tmp_path / "cache"
    source = lambda: table_source(path, "click", ["a"], ["x"])  # noqa: E731
    first = preprocess(source(), EncodeOptions(), cache, progress=False)
    reference = {split: _arrays(first, split) for split in ("train", "test")}
    damage(first.path)
    with caplog.at_level(logging.WARNING, logger="lightning_afm.data.pipeline"):
        rebuilt = preprocess(source(), EncodeOptions(), cache, progress=False)
    assert not rebuilt.reused and rebuilt.path == first.path
    assert any("is damaged" in r.getMessage() and problem in r.getMessage() for r in caplog.records)
    for split, arrays in reference.items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(_arrays(rebuilt, split)[name], array)
    assert preprocess(source(), EncodeOptions(), cache, progress=False).reused  # and the next run reuses it
    assert sorted(p.name for p in cache.iterdir()) == [first.path.name]


def test_truncated_array_names_the_file_when_loaded(crafted, tmp_path):
    from lightning_afm.data.cache import load_split
    from lightning_afm.data.errors import CacheError

    path, _, _ = crafted
    result = preprocess(table_source(path, "click", ["a"], ["x"]), EncodeOptions(), tmp_path / "c", progress=False)
    label = result.path / "train" / "label.npy"
    os.truncate(label, label.stat().st_size - 4)
    with pytest.raises(CacheError, match=rf"{result.path} is damaged: train/label.npy is .* bytes.*truncated.*Delete that directory"):
        load_split(result.path / "train")


def test_damaged_cache_in_a_read_only_directory_says_what_to_delete(crafted, tmp_path):
    from lightning_afm.data.errors import CacheError

    path, _, _ = crafted
    cache = tmp_path / "cache"
    result = preprocess(table_source(path, "click", ["a"], ["x"]), EncodeOptions(), cache, progress=False)
    (result.path / "schema.json").unlink()
    undo = _make_read_only(cache)
    try:
        with pytest.raises(CacheError, match="cannot write the encoded cache"):
            preprocess(table_source(path, "click", ["a"], ["x"]), EncodeOptions(), cache, progress=False)
    finally:
        undo()
