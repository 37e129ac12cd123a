"""The two real samples (shared/data) parsed exactly, checked against plain Python's csv module."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lightning_afm.data.pipeline import EncodeOptions, preprocess
from lightning_afm.data.readers import AVAZU_CATEGORICAL, BadRows, avazu_source, criteo_source
from lightning_afm.data.split import SPLIT_NAMES, split_assignment
from lightning_afm.data.vocab import load_vocab, vocab_path


def shared_data_dir() -> Path | None:
    """$LIGHTNING_AFM_SHARED_DATA, else ../shared/data beside the repository (CI copies it there)."""
    env = os.environ.get("LIGHTNING_AFM_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path if path.is_dir() else None


DATA = shared_data_dir()
pytestmark = pytest.mark.skipif(
    DATA is None, reason="shared data samples not found: set LIGHTNING_AFM_SHARED_DATA or put shared/data beside the repo"
)
CRITEO = DATA / "criteo_sample_10k.txt" if DATA else None
AVAZU = DATA / "avazu_sample_3k.csv" if DATA else None


def _criteo_rows() -> list[list[str]]:
    with open(CRITEO, newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _avazu_rows() -> tuple[list[str], list[list[str]]]:
    with open(AVAZU, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def criteo(tmp_path_factory):
    return preprocess(criteo_source(CRITEO), EncodeOptions(), tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="module")
def avazu(tmp_path_factory):
    return preprocess(avazu_source(AVAZU), EncodeOptions(test_fraction=0.2), tmp_path_factory.mktemp("cache"), progress=False)


def _splits(path: Path) -> dict[str, dict[str, np.ndarray]]:
    return {s: {a: np.load(path / s / f"{a}.npy") for a in ("categorical", "numeric", "label")} for s in SPLIT_NAMES}


def _vocab(path: Path, field: str) -> dict[str, tuple[int, int]]:
    """value -> (id, count) of one field's vocabulary file (OOV row excluded)."""
    table = load_vocab(vocab_path(path, field)).to_pydict()
    return {v: (i, c) for i, v, c in zip(table["id"], table["value"], table["count"]) if i != 0}


def test_criteo_sample_shape_labels_and_split(criteo):
    rows = _criteo_rows()
    assert len(rows) == 10_000 and all(len(r) == 40 for r in rows)
    schema = criteo.schema
    assert schema.num_categorical == 26 and schema.num_numeric == 13
    assert schema.categorical_names == [f"C{i}" for i in range(1, 27)]
    assert list(schema.numeric) == [f"I{i}" for i in range(1, 14)]
    arrays = _splits(criteo.path)
    assert {s: len(a["label"]) for s, a in arrays.items()} == {"train": 9000, "val": 0, "test": 1000}
    assert sum(int(a["label"].sum()) for a in arrays.values()) == 2182
    assert sum(int(r[0]) for r in rows) == 2182
    for a in arrays.values():
        assert a["categorical"].dtype == np.int32 and a["numeric"].dtype == np.float32 and a["label"].dtype == np.float32


def test_criteo_sample_values_match_python_csv(criteo):
    """Every encoded id, vocabulary count and scaled number, recomputed from csv rows."""
    rows = _criteo_rows()
    assignment = split_assignment(len(rows), 0.1, 0.0, 2020)
    arrays = _splits(criteo.path)
    train_rows = [r for r, s in zip(rows, assignment) if s == 0]
    for f in range(26):
        name = f"C{f + 1}"
        vocab = _vocab(criteo.path, name)
        assert {v: c for v, (_, c) in vocab.items()} == Counter(r[14 + f] for r in train_rows)
        assert criteo.schema.vocab_sizes[f] == len(vocab) + 1
        counts = [c for _, (_, c) in sorted(vocab.items(), key=lambda kv: kv[1][0])]
        assert counts == sorted(counts, reverse=True)  # frequent values get low ids
        for s, split in enumerate(SPLIT_NAMES):
            expected = [vocab.get(r[14 + f], (0, 0))[0] for r, a in zip(rows, assignment) if a == s]
            assert arrays[split]["categorical"][:, f].tolist() == expected, (name, split)
    # numbers: missing -> 0, then min-max with the training min/max, clipped
    raw = np.array([[float(x) if x != "" else 0.0 for x in r[1:14]] for r in rows])
    low, high = raw[assignment == 0].min(axis=0), raw[assignment == 0].max(axis=0)
    scaled = np.clip((raw - low) / np.where(high > low, high - low, 1.0), 0.0, 1.0)
    for s, split in enumerate(SPLIT_NAMES):
        np.testing.assert_allclose(arrays[split]["numeric"], scaled[assignment == s], atol=1e-6)
    assert criteo.schema.extra["numeric_min"] == low.tolist() and criteo.schema.extra["numeric_max"] == high.tolist()


@pytest.mark.parametrize("column", ["I1", "I12", "C3", "C19", "C22"])
def test_criteo_sample_missing_counts(criteo, column):
    """Missing values counted by csv equal the missing token's rows (categorical) or reader nulls (numeric)."""
    rows = _criteo_rows()
    index = (["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]).index(column)
    expected = sum(r[index] == "" for r in rows)
    assert expected > 0
    if column.startswith("C"):
        missing_id = _vocab(criteo.path, column)[""][0]
        got = sum(int((a["categorical"][:, int(column[1:]) - 1] == missing_id).sum()) for a in _splits(criteo.path).values())
    else:
        source = criteo_source(CRITEO)
        got = sum(chunk.table.column(column).null_count for chunk in source.chunks("error", BadRows()))
    assert got == expected


def test_avazu_sample_exact(avazu):
    header, rows = _avazu_rows()
    assert len(rows) == 2994 and len(header) == 24
    schema = avazu.schema
    assert schema.categorical_names == list(AVAZU_CATEGORICAL) and schema.num_numeric == 0 and schema.label == "click"
    arrays = _splits(avazu.path)
    assert sum(int(a["label"].sum()) for a in arrays.values()) == 522
    assignment = split_assignment(len(rows), 0.2, 0.0, 2020)
    assert len(arrays["test"]["label"]) == int((assignment == 2).sum()) == 599
    for f, name in enumerate(AVAZU_CATEGORICAL):
        col = header.index(name)
        vocab = _vocab(avazu.path, name)
        assert {v: c for v, (_, c) in vocab.items()} == Counter(r[col] for r, a in zip(rows, assignment) if a == 0)
        for s, split in enumerate(SPLIT_NAMES):
            expected = [vocab.get(r[col], (0, 0))[0] for r, a in zip(rows, assignment) if a == s]
            assert arrays[split]["categorical"][:, f].tolist() == expected
    # values seen only in the test split are OOV (id 0), and the sample has some
    assert (arrays["test"]["categorical"] == 0).sum() > 0
    assert (arrays["train"]["categorical"] == 0).sum() == 0  # min_count=1: every training value has a row


def test_avazu_sample_field_cardinalities_are_train_only(avazu):
    header, rows = _avazu_rows()
    assignment = split_assignment(len(rows), 0.2, 0.0, 2020)
    for f, name in enumerate(AVAZU_CATEGORICAL):
        col = header.index(name)
        train_distinct = len({r[col] for r, a in zip(rows, assignment) if a == 0})
        assert avazu.schema.vocab_sizes[f] == train_distinct + 1
        assert avazu.schema.extra["distinct_train_values"][f] == train_distinct
