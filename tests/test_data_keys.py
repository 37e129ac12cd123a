"""Value keys and the growing dictionary, against plain Python dicts."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pyarrow as pa
import pytest

from lightning_afm.data.keys import MISSING_BUCKET, GrowingDictionary, fixed8_row_keys, keys_to_arrow, string_keys


def test_short_strings_pack_into_sortable_uint64():
    values = ["", "a", "ab", "b", "00000000", "ffffffff", "zz", None]
    keys = string_keys(pa.array(values))
    assert keys.dtype == np.uint64
    assert keys[0] == keys[-1] == 0  # null and "" are the same token: missing
    assert len(set(keys[:-1].tolist())) == 7
    # the packed order is the bytes' order
    present = [v for v in values[:-1]]
    assert [present[i] for i in np.argsort(keys[:-1], kind="stable")] == sorted(present)
    assert keys_to_arrow(keys).to_pylist() == [v or "" for v in values]


def test_long_strings_use_fixed_width_bytes_and_a_sliced_array():
    values = pa.array(["x" * 20, "short", "é-unicode-ok", None, "y" * 9])[1:]  # an offset into the buffers
    keys = string_keys(values)
    assert keys.dtype.kind == "S"
    assert keys_to_arrow(keys).to_pylist() == ["short", "é-unicode-ok", "", "y" * 9]


def test_null_slot_bytes_are_ignored():
    # Arrow allows a null slot to cover bytes; the key must still be the missing key.
    arr = pa.Array.from_buffers(pa.string(), 2, [pa.py_buffer(bytes([0b10])), pa.py_buffer(np.array([0, 3, 5], np.int32).tobytes()), pa.py_buffer(b"abcde")])
    assert arr.to_pylist() == [None, "de"]
    assert string_keys(arr)[0] == 0


def test_fixed8_row_keys_equal_string_keys_per_row():
    full = pa.array(["0123abcd", "ffffffff", "0123abcd"], pa.binary())
    holes = pa.array(["0123abcd", None, "", "deadbeef"], pa.binary())[1:]  # an offset, a null and ""
    for column in (full, holes, pa.chunked_array([full, holes])):
        keys = fixed8_row_keys(column)
        values = column.to_pylist()
        assert keys.tolist() == [int(string_keys(pa.array([v], pa.binary()))[0]) for v in values]
    assert fixed8_row_keys(pa.array(["0123abcd", "short"], pa.binary())) is None
    assert fixed8_row_keys(pa.chunked_array([full, pa.array(["123456789"], pa.binary())])) is None


def test_growing_dictionary_matches_python_dict():
    rng = np.random.default_rng(0)
    d, reference = GrowingDictionary(), {}
    counts = {}
    for _ in range(200):
        keys = rng.integers(0, 3000, size=rng.integers(1, 300)).astype(np.uint64)
        ids = d.ids_for(keys)
        assert ids.tolist() == [reference.setdefault(int(k), len(reference)) for k in keys]
        d.add_counts(ids, np.ones(len(ids), dtype=np.int64))
        for k in keys.tolist():
            counts[k] = counts.get(k, 0) + 1
    assert d.size == len(reference)
    assert d.keys_by_id().tolist() == list(reference)
    assert d.counts.tolist() == [counts[k] for k in reference]
    assert d.id_of(np.uint64(next(iter(reference)))) == 0 and d.id_of(np.uint64(10**9)) is None


def test_growing_dictionary_widens_from_uint64_to_bytes():
    d = GrowingDictionary()
    short = string_keys(pa.array(["a", "bb", ""]))
    assert d.ids_for(short).tolist() == [0, 1, 2]
    long = string_keys(pa.array(["bb", "a-much-longer-value", "a"]))
    assert d.ids_for(long).tolist() == [1, 3, 0]
    assert keys_to_arrow(d.keys_by_id()).to_pylist() == ["a", "bb", "", "a-much-longer-value"]
    assert d.id_of(np.uint64(0)) == 2  # the missing key is found after widening


def test_int64_bucket_keys():
    d = GrowingDictionary()
    keys = np.array([5, MISSING_BUCKET, -3], dtype=np.int64)
    assert d.ids_for(keys).tolist() == [0, 1, 2]
    assert keys_to_arrow(d.keys_by_id()).to_pylist() == ["5", "", "-3"]


@pytest.mark.parametrize(
    "module",
    ["keys", "vocab", "numeric", "split", "convert", "cache", "batching", "synthetic", "pipeline"],
)
def test_docstring_examples(module):
    mod = importlib.import_module(f"lightning_afm.data.{module}")
    failures, _ = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0
