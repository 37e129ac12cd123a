"""The synthetic generator: deterministic, Zipf-shaped, with a learnable hidden signal."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_afm.data.pipeline import EncodeOptions, preprocess
from lightning_afm.data.readers import criteo_source
from lightning_afm.data.synthetic import (
    CRITEO_CARDINALITIES,
    SyntheticConfig,
    binary_auc,
    make_synthetic,
    make_truth,
    write_criteo_format,
    zipf_values,
)


@pytest.fixture(scope="module")
def table():
    return make_synthetic(num_rows=60_000, seed=11)


def test_deterministic_by_seed(table):
    again = make_synthetic(num_rows=60_000, seed=11)
    for a, b in zip((table.categorical, table.numeric, table.label), (again.categorical, again.numeric, again.label)):
        np.testing.assert_array_equal(a, b)
    other = make_synthetic(num_rows=60_000, seed=12)
    assert not np.array_equal(table.label, other.label)


def test_shapes_rates_and_missing(table):
    config = SyntheticConfig(num_rows=60_000, seed=11)
    assert table.categorical.shape == (60_000, len(config.vocab_sizes)) and table.numeric.shape == (60_000, 5)
    assert 0.19 < table.label.mean() < 0.25  # base rate ~22%
    for f, vocab in enumerate(config.vocab_sizes):
        assert 0 <= table.categorical[:, f].min() and table.categorical[:, f].max() < vocab
    missing = np.isnan(table.numeric).mean(axis=0)
    np.testing.assert_allclose(missing, [n.missing_rate for n in config.numeric], atol=0.01)


def test_zipf_head_and_tail():
    rng = np.random.default_rng(0)
    values = zipf_values(rng, 200_000, 10_000, 1.1)
    counts = np.bincount(values, minlength=10_000)
    assert counts[0] > counts[1] > counts[3] > counts[30]
    # P(k) ~ (k+1)^-1.1: the ratio of the first two frequencies is about 2^1.1
    assert 1.8 < counts[0] / counts[1] < 2.5
    assert (counts == 0).sum() > 500  # a long tail: many values never drawn


def test_ground_truth_auc_near_point_eight(table):
    assert 0.76 < binary_auc(table.label, table.logit) < 0.85


def test_signal_is_learnable_by_a_simple_model(table):
    """Smoothed per-value log-odds counted on 80% of the rows (naive Bayes) rank the other 20% well."""
    n = len(table.label)
    train = np.arange(n) < int(0.8 * n)
    prior = table.label[train].mean()
    score = np.zeros(n)
    for f in range(table.categorical.shape[1]):
        v = table.categorical[:, f]
        clicks = np.bincount(v[train], weights=table.label[train], minlength=v.max() + 1)
        seen = np.bincount(v[train], minlength=v.max() + 1)
        score += np.log((clicks + 20 * prior) / (seen - clicks + 20 * (1 - prior)))[v]
    assert binary_auc(table.label[~train], score[~train]) > 0.65


def test_truth_parts_are_scaled_and_bias_hits_base_rate():
    config = SyntheticConfig(num_rows=1000, base_rate=0.3, seed=5)
    truth = make_truth(config)
    assert set(truth.part_scale) == {"values", "pairs", "numeric", "relu"}
    big = make_synthetic(config, num_rows=40_000)
    assert abs(big.label.mean() - 0.3) < 0.015


def test_binary_auc_against_pairwise_definition():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    s = rng.integers(0, 20, 300).astype(float)  # many ties
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert binary_auc(y, s) == pytest.approx(pairwise, abs=1e-12)


def test_criteo_format_writer_round_trip(tmp_path):
    path = write_criteo_format(tmp_path / "train.txt", 5_000, seed=2)
    lines = path.read_text().splitlines()
    assert len(lines) == 5_000 and all(line.count("\t") == 39 for line in lines)
    fields = [line.split("\t") for line in lines]
    assert {f[0] for f in fields} == {"0", "1"}
    assert any(f[2].startswith("-") for f in fields)  # I2 has small negative values, as in Criteo
    assert all(len(f[14]) == 8 and int(f[14], 16) >= 0 for f in fields)  # C1: 8 hex digits
    assert np.mean([f[11] == "" for f in fields]) < 0.1  # I11 is rarely missing
    assert 0.7 < np.mean([f[12] == "" for f in fields]) < 0.85  # I12 is mostly missing (77% in Criteo)
    assert 0.75 < np.mean([f[35] == "" for f in fields]) < 0.88  # so is C22 (82%)
    result = preprocess(criteo_source(path), EncodeOptions(), tmp_path / "cache", progress=False)
    assert sum(result.schema.extra["rows"].values()) == 5_000
    assert all(v <= c + 2 for v, c in zip(result.schema.vocab_sizes, CRITEO_CARDINALITIES))  # + OOV + missing
    np.testing.assert_array_equal(write_criteo_format(tmp_path / "again.txt", 5_000, seed=2).read_bytes(), path.read_bytes())


def test_generate_command_writes_a_criteo_file_at_the_asked_click_rate(tmp_path, capsys):
    from lightning_afm.data.generate import main

    path = main([str(tmp_path / "gen.txt"), "--rows", "20000", "--seed", "7", "--ctr", "0.2"])
    labels = np.array([int(line.split("\t", 1)[0]) for line in path.read_text().splitlines()])
    assert len(labels) == 20_000 and abs(labels.mean() - 0.2) < 0.02
    assert "wrote 20,000 rows" in capsys.readouterr().out
    other = main([str(tmp_path / "other.txt"), "--rows", "20000", "--seed", "8", "--ctr", "0.2"])
    assert other.read_bytes() != path.read_bytes(), "another seed is another dataset"
    with pytest.raises(SystemExit):  # never overwrites
        main([str(path), "--rows", "10"])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x.txt"), "--ctr", "1.5"])
