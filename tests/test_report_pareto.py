"""The pareto table on hand-written runs, and the uniform rank pair chooser against brute force."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_afm.compress.pricing import Price
from lightning_afm.report import write_report
from lightning_afm.report.pareto_ranks import PAPER_PROPORTION, choose_pair, uniform_params

SYNTHETIC = {"_target_": "lightning_afm.data.SyntheticDataModule", "num_rows": 60000, "val_fraction": 0.1,
             "test_fraction": 0.1, "seed": 2020, "vocab_sizes": [3, 8, 200]}
BASE_PARAMS = 1_000_000


def _write(root: Path, name: str, seed: int, auc: float, params: int, overrides: list[str], stages=(),
           budget=None, latency=None, compression=None, ratio=None) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    summary = {"model": "deepfm", "data": "synthetic", "seed": seed, "params": params, "test_auc": auc,
               "test_logloss": 0.45, "stages": list(stages)}
    if stages:
        summary.update(baseline_test_auc=0.70 + seed * 1e-4, baseline_test_logloss=0.46, baseline_params=BASE_PARAMS)
    if budget:
        summary["budget"] = budget
    (run / "summary.json").write_text(json.dumps(summary))
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    config = {"seed": seed, "data": SYNTHETIC, "compression": compression}
    if ratio is not None:
        config["pareto_ratio"] = ratio
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    if latency is not None:
        (run / "latency.json").write_text(json.dumps({"batch": 10_000, "median_ms": latency}))
    return run


def _uniform(root, seed, auc, params, mlp=64, emb=2, ratio=2, latency=None, extra=()):
    stages = [{"kind": "mlp", "method": "afm", "rank": mlp}, {"kind": "emb", "method": "afm", "rank": emb}]
    comp = {"mlp": {"rank": mlp}, "emb": {"rank": emb}}
    return _write(root, f"u{ratio}_{mlp}_{emb}_s{seed}", seed, auc, params,
                  ["compression=afm", f"compression.mlp.rank={mlp}", f"compression.emb.rank={emb}",
                   f"+pareto_ratio={ratio}", f"seed={seed}", *extra], stages, latency=latency, compression=comp, ratio=ratio)


def _auto(root, seed, auc, params, ratio=2, latency=None, extra=()):
    stages = [{"kind": "mlp", "method": "afm", "rank": None}, {"kind": "emb", "method": "afm", "rank": None}]
    budget = {"ranks": {"mlp.1.linear": 16, "mlp.2.linear": 8, "embeddings.C1": 1, "embeddings.C2": 9}}
    comp = {"mlp": {"rank": "auto"}, "emb": {"rank": "auto"}, "budget": {"ratio": ratio}}
    return _write(root, f"a{ratio}_s{seed}", seed, auc, params,
                  ["compression=afm_auto", f"compression.budget.ratio={ratio}", f"+pareto_ratio={ratio}",
                   f"seed={seed}", *extra], stages, budget=budget, latency=latency, compression=comp, ratio=ratio)


def _rows(markdown: str) -> list[list[str]]:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("| ") and not ln.startswith("| Structure")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_pareto_table_rows_means_ratios_and_latency(tmp_path):
    for seed in (0, 1):
        _write(tmp_path, f"base_s{seed}", seed, 0.7000 + seed * 0.0002, BASE_PARAMS, ["compression=none", f"seed={seed}"],
               latency=40.0 + seed)
        _uniform(tmp_path, seed, 0.6990 + seed * 0.0002, 500_000, latency=20.0 + 2 * seed)
        _auto(tmp_path, seed, 0.6996 + seed * 0.0002, 498_000)
        _uniform(tmp_path, seed, 0.6900, 200_000, mlp=8, emb=1, ratio=5)
        _auto(tmp_path, seed, 0.6950, 199_000, ratio=5, latency=10.0)
    markdown, _, png = write_report("pareto", [tmp_path], plot=True)
    rows = _rows(markdown)
    assert [r[:2] for r in rows] == [["baseline", "–"], ["uniform", "2x"], ["auto", "2x"], ["uniform", "5x"],
                                     ["auto", "5x"]]
    base, uni2, auto2, uni5, auto5 = rows
    assert base[6] == "0.7001 ± 0.0001" and base[8] == "40.5 ± 0.7" and base[4] == "1.00x"
    assert uni2[2] == "MLP 64, emb 2" and uni2[4] == "2.00x" and uni2[7] == "-0.0010" and uni2[8] == "21.0 ± 1.4"
    assert auto2[2] == "MLP 8-16, emb 1-9" and auto2[7] == "-0.0004" and auto2[8] == "–"
    assert auto5[6] == "0.6950 ± 0.0000" and auto5[8] == "10.0 ± 0.0" and uni5[2] == "MLP 8, emb 1"
    assert png is not None and png.stat().st_size > 0


def test_pareto_baseline_row_comes_from_the_compressed_runs_without_plain_ones(tmp_path):
    for seed in (0, 1, 2):
        _uniform(tmp_path, seed, 0.69, 500_000)
        _auto(tmp_path, seed, 0.69, 500_000)
    (base, *_rest) = _rows(write_report("pareto", [tmp_path], plot=False)[0])
    assert base[0] == "baseline" and base[5] == "3" and base[6] == "0.7001 ± 0.0001"  # 0.7000, 0.7001, 0.7002


def test_pareto_keeps_different_uniform_pairs_of_one_budget_apart(tmp_path):
    _uniform(tmp_path, 0, 0.69, 500_000, mlp=64, emb=2)
    _uniform(tmp_path, 0, 0.68, 500_000, mlp=128, emb=1)
    rows = _rows(write_report("pareto", [tmp_path], plot=False)[0])
    assert sorted(r[2] for r in rows if r[0] == "uniform") == ["MLP 128, emb 1", "MLP 64, emb 2"]


def test_pareto_refuses_runs_that_differ_in_a_hidden_setting(tmp_path):
    _auto(tmp_path, 0, 0.69, 500_000, extra=["model.lr=0.001"])
    _auto(tmp_path, 1, 0.69, 500_000, extra=["model.lr=0.003"])
    with pytest.raises(ValueError, match=r"differ in model.lr \(0.001, 0.003\)"):
        write_report("pareto", [tmp_path], plot=False)


def test_pareto_latency_of_another_batch_is_not_shown_and_bad_json_is_named(tmp_path):
    run = _auto(tmp_path, 0, 0.69, 500_000)
    (run / "latency.json").write_text(json.dumps({"batch": 512, "median_ms": 3.0}))
    assert _rows(write_report("pareto", [tmp_path], plot=False)[0])[-1][8] == "–"
    (run / "latency.json").write_text("{not json")
    with pytest.raises(ValueError, match="latency.json is not valid JSON"):
        write_report("pareto", [tmp_path], plot=False)


# Prices as pricing.price_targets gives them: two MLP Linears (400 wide) and three tables.
PRICES = [Price("mlp.1.linear", 800, -160_400, 400, False), Price("mlp.2.linear", 800, -160_400, 400, False),
          Price("embeddings.C1", 500 + 400, -8_000 - 6_400, 16, True),
          Price("embeddings.C2", 3_000 + 400, -48_000 - 6_400, 16, True),
          Price("embeddings.C3", 20_000 + 400, -320_000 - 6_400, 16, True)]
NOW = 2_000_000


def _reference_count(mlp, emb):
    """The count written out term by term (no Price.added), each rank capped at its target's width."""
    total = NOW
    for p in PRICES:
        rank = min(emb if p.is_table else mlp, p.max_rank)
        total += p.cost * rank + p.change
    return total


@pytest.mark.parametrize("max_params", [1_900_000, 1_700_000, 1_650_000, 1_600_000])
def test_choose_pair_matches_brute_force(max_params):
    pair = choose_pair(NOW, PRICES, max_params)
    assert pair.params == uniform_params(NOW, PRICES, pair.mlp, pair.emb) == _reference_count(pair.mlp, pair.emb)
    assert pair.params <= max_params and pair.mlp % 8 == 0
    # MLP ranks up to the layers' break-even: 800 m - 160,400 < 0, i.e. m <= 200
    every = [(m, e, _reference_count(m, e)) for m, e in itertools.product(range(8, 208, 8), range(1, 17))]
    fitting = [c for c in every if c[2] <= max_params]
    # the rule: among the largest MLP rank per embedding rank, those within 1 % of the best count,
    # the nearest to the paper's 32 : 1 proportion
    per_emb = {e: max((c for c in fitting if c[1] == e), key=lambda c: c[2]) for e in {c[1] for c in fitting}}
    top = max(c[2] for c in per_emb.values())
    near = [c for c in per_emb.values() if c[2] >= top - 0.01 * max_params]
    want = min(near, key=lambda c: (abs(math.log(c[0] / c[1] / PAPER_PROPORTION)), -c[2]))
    assert (pair.mlp, pair.emb, pair.params) == want


def test_choose_pair_never_takes_an_mlp_rank_past_the_break_even():
    # a generous budget: without the cap the largest count is MLP rank 400 (a factored 400 x 400
    # layer with twice the dense layer's parameters); with it, 200 (the largest rank that saves)
    pair = choose_pair(NOW, PRICES, 10_000_000)
    assert pair.mlp == 200
    assert all(p.added(pair.mlp) < 0 for p in PRICES if not p.is_table)
    # a layer whose break-even is lower caps every layer's uniform rank
    narrow = [*PRICES, Price("mlp.3.linear", 500, -40_100, 100, False)]  # 100 x 400: saves up to rank 80
    assert choose_pair(NOW, narrow, 10_000_000).mlp == 80


def test_choose_pair_names_the_smallest_uniform_count_when_nothing_fits():
    least = _reference_count(8, 1)
    with pytest.raises(ValueError, match=f"already leave {least:,}"):
        choose_pair(NOW, PRICES, least - 1)
    assert choose_pair(NOW, PRICES, least).params == least


def test_auto_ranks_label_names_the_targets_left_dense():
    from types import SimpleNamespace

    from lightning_afm.report.tables.pareto import ranks_label

    def run(block):
        return SimpleNamespace(stages=[{"kind": "mlp"}], summary={"budget": block}, value=lambda key: None)

    tables = {"embeddings.C1": 1, "embeddings.C2": 9}
    assert ranks_label(run({"ranks": {"mlp.1.linear": 8, **tables}, "dense": ["mlp.2.linear"]})) == "MLP 8-dense, emb 1-9"
    assert ranks_label(run({"ranks": tables, "dense": ["mlp.1.linear", "mlp.2.linear"]})) == "MLP dense, emb 1-9"
    assert ranks_label(run({"ranks": {"mlp.1.linear": 16, "mlp.2.linear": 16, "embeddings.C1": 2},
                            "dense": []})) == "MLP 16, emb 2"
