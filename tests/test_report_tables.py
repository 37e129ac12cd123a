"""lightning-afm-report on hand-written summary trees: every table's layout, its figures, the bench merge, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_afm.report import TABLES, find_runs, write_report
from lightning_afm.report.cli import main

SYNTHETIC = {"_target_": "lightning_afm.data.SyntheticDataModule", "num_rows": 200000, "val_fraction": 0.1,
             "test_fraction": 0.1, "seed": 2020, "vocab_sizes": [3, 8, 200000]}


def _stage(kind, method, rank, params, pre, post, start, layers=None):
    """A stage record as the callback writes it; ``pre``/``post``: (auc, logloss)."""
    return {"name": kind, "kind": kind, "method": method, "rank": rank, "start_epoch": start, "epochs": 1,
            "params_before": None, "params": params, "layers": layers or {},
            "pre_finetune_test_auc": pre[0], "pre_finetune_test_logloss": pre[1],
            "test_auc": post[0], "test_logloss": post[1]}


def _summary(model="deepfm", data="synthetic", seed=0, base=(0.7000, 0.4800), base_params=2_215_036, stages=(),
             final=None, epochs=3):
    stages = list(stages)
    last = stages[-1] if stages else None
    auc, logloss = final or ((last["test_auc"], last["test_logloss"]) if last else base)
    summary = {"model": model, "data": data, "seed": seed, "epochs": epochs,
               "params": last["params"] if last else base_params, "test_auc": auc, "test_logloss": logloss,
               "stages": stages}
    if stages and stages[0]["method"] != "random":
        summary.update(baseline_test_auc=base[0], baseline_test_logloss=base[1], baseline_params=base_params)
    elif stages:
        summary.update(baseline_params=base_params)
    return summary


def _write(root: Path, job, summary, overrides=(), compression=None, data=SYNTHETIC) -> Path:
    run = root / str(job)
    (run / ".hydra").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(summary))
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))
    config = {"seed": summary["seed"], "data": data, "compression": compression}
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    return run


def _afm(model="deepfm", seed=0, data="synthetic", base=(0.7000, 0.4800), mlp=(0.7001, 0.4790), emb=(0.7010, 0.4780),
         emb_pre=(0.6990, 0.4810), method="afm", relu=True):
    stages = [_stage("mlp", method, 64, 1_997_564, base, mlp, 1),
              _stage("emb", method, 2, 435_414, emb_pre, emb, 2)]
    compression = {"baseline_epochs": 1, "mlp": {"method": method, "rank": 64, "relu": relu},
                   "emb": {"method": method, "rank": 2}}
    return _summary(model=model, data=data, seed=seed, base=base, stages=stages), compression


def _rows(markdown: str) -> list[list[str]]:
    """The body rows of every Markdown table, as lists of stripped cells."""
    lines = markdown.splitlines()
    out = []
    for i, line in enumerate(lines):
        is_rule = set(line) <= set("|-: ")
        is_header = i + 1 < len(lines) and lines[i + 1].startswith("|") and set(lines[i + 1]) <= set("|-: ")
        if line.startswith("|") and not is_rule and not is_header:
            out.append([c.strip() for c in line.strip("|").split("|")])
    return out


def _row(markdown: str, *first: str) -> list[str]:
    hits = [r for r in _rows(markdown) if r[: len(first)] == list(first)]
    assert len(hits) == 1, f"expected one row starting {first}, got {hits} in\n{markdown}"
    return hits[0]


def test_every_paper_table_is_registered():
    # the paper's tables, then the named ones of this project (pareto: issue 13)
    assert list(TABLES) == ["table2", "table4", "table6", "table7", "table8", "table11", "table13", "table14",
                            "table15", "table16", "table17", "pareto"]


def test_runs_are_found_recursively_in_job_order_with_their_overrides(tmp_path):
    for job in (10, 2, 1):
        s, c = _afm(seed=job)
        _write(tmp_path / "sweep", job, s, [f"seed={job}"], c)
    runs = find_runs(tmp_path)
    assert [r.path.name for r in runs] == ["1", "2", "10"]
    assert runs[2].overrides == ["seed=10"] and runs[2].value("compression.mlp.rank") == 64
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        find_runs(tmp_path / "sweep" / "1" / ".hydra")


def test_table2_rows_deltas_and_bench_merge(tmp_path):
    for job, model in enumerate(["deepfm", "dcn"]):
        s, c = _afm(model=model, base=(0.7000 + job / 100, 0.48))
        _write(tmp_path / "runs", job, s, [f"model={model}"], c)
    bench = [
        {"model": "deepfm", "dataset": "criteo", "variant": "baseline", "params": 574_460_000, "samples_per_s": 10000.0,
         "gain_pct": 0.0},
        {"model": "deepfm", "dataset": "criteo", "variant": "afm_emb", "params": 37_770_000, "samples_per_s": 16000.0,
         "gain_pct": 60.0, "vocab_cap": 100000},
    ]
    (tmp_path / "runs" / "bench").mkdir()
    (tmp_path / "runs" / "bench" / "bench.json").write_text(json.dumps(bench))
    md, path, png = write_report("table2", [tmp_path / "runs"], tmp_path / "out")
    assert path.read_text() == md and png is None
    # paper order: DCN before DeepFM; the model name only on its first row
    rows = _rows(md)
    assert [r[0] for r in rows[:4]] == ["DCN", "", "", "DeepFM"]
    base = _row(md, "DeepFM", "Baseline")
    assert base[2:7] == ["0.7000", "–", "0.4800", "2.22M", "–"]
    assert base[7:] == ["574.46M", "10,000", "–"]
    emb = rows[5]
    assert emb[:4] == ["", "+AFM EMB", "0.7010", "+0.0010"]
    assert emb[5:7] == ["0.44M", "5.09x"] and emb[7:] == ["37.77M", "16,000", "+60.0 %"]
    assert "paper's criteo shape (**not the shape of the trained models**; every table capped at 100,000 rows)" in md
    # DCN has no bench rows: its throughput cells say so instead of borrowing DeepFM's
    assert _row(md, "DCN", "Baseline")[7:] == ["–", "–", "–"]


def test_table2_rejects_a_malformed_bench_file(tmp_path):
    s, c = _afm()
    _write(tmp_path / "runs", 0, s, [], c)
    bad = tmp_path / "bench.json"
    bad.write_text(json.dumps([{"model": "deepfm", "variant": "baseline"}]))
    with pytest.raises(ValueError, match=r"row 0 lacks \['dataset'\]"):
        write_report("table2", [tmp_path / "runs"], tmp_path / "out", bench=str(bad))


def test_table4_methods_stages_and_baseline(tmp_path):
    afm, c_afm = _afm()
    svd, c_svd = _afm(method="svd", mlp=(0.69, 0.60), emb=(0.695, 0.55), emb_pre=(0.68, 0.58))
    ttd = _summary(stages=[_stage("emb", "ttd", 16, 900_000, (0.65, 0.52), (0.698, 0.481), 1)])
    _write(tmp_path, 0, svd, ["compression=svd"], c_svd)
    _write(tmp_path, 1, afm, ["compression=afm"], c_afm)
    _write(tmp_path, 2, ttd, ["compression=ttd_emb"], {"baseline_epochs": 1, "emb": {"method": "ttd", "rank": 16}})
    md, _, _ = write_report("table4", [tmp_path])
    assert "## DeepFM on synthetic" in md
    assert _row(md, "Baseline") == ["Baseline", "1 epoch", "2.22M", "–", "–", "–", "0.7000", "0.4800"]
    assert _row(md, "AFM", "MLP")[2:] == ["2.00M", "1.11x", "0.7000", "0.4800", "0.7001", "0.4790"]
    assert _row(md, "", "EMB (after MLP)", "0.44M", "5.09x", "0.6990")[6:] == ["0.7010", "0.4780"]
    assert _row(md, "SVD", "MLP")[6:] == ["0.6900", "0.6000"]
    assert _row(md, "TTD", "EMB (on the baseline)")[2:] == ["0.90M", "2.46x", "0.6500", "0.5200", "0.6980", "0.4810"]
    # AFM rows come first, whatever the job order
    methods = [r[0] for r in _rows(md) if r[0]]
    assert methods == ["Baseline", "AFM", "SVD", "TTD"]


def test_table4_shows_both_ttd_initialisations_as_rows(tmp_path):
    random_ = _summary(stages=[_stage("emb", "ttd", 16, 900_000, (0.60, 0.55), (0.690, 0.490), 1)])
    svd = _summary(stages=[_stage("emb", "ttd", 16, 900_000, (0.65, 0.52), (0.698, 0.481), 1)])
    emb = {"method": "ttd", "rank": 16, "ttd_min_rows": 100000, "ttd_lr": True}
    _write(tmp_path, 0, random_, ["compression=ttd_emb"], {"baseline_epochs": 1, "emb": {**emb, "ttd_init": "random"}})
    _write(tmp_path, 1, svd, ["compression=ttd_emb", "compression.emb.ttd_init=svd"],
           {"baseline_epochs": 1, "emb": {**emb, "ttd_init": "svd"}})
    md, _, _ = write_report("table4", [tmp_path])  # the override is shown, so nothing is refused
    assert _row(md, "TTD (random init, TT-Rec)")[4:] == ["0.6000", "0.5500", "0.6900", "0.4900"]
    assert _row(md, "TTD (TT-SVD init)")[4:] == ["0.6500", "0.5200", "0.6980", "0.4810"]


def _bench_row(variant, params, sps, gain, **extra):
    return {"model": "deepfm", "dataset": "criteo", "variant": variant, "params": params, "samples_per_s": sps,
            "gain_pct": gain, "vocab_cap": 100000, **extra}


def test_table4_throughput_columns_map_each_row_to_its_bench_variant(tmp_path):
    afm, c_afm = _afm()
    svd, c_svd = _afm(method="svd", mlp=(0.69, 0.60), emb=(0.695, 0.55), emb_pre=(0.68, 0.58))
    afm_base = _summary(stages=[_stage("emb", "afm", 2, 650_000, (0.699, 0.481), (0.697, 0.486), 1)])
    ttd = _summary(stages=[_stage("emb", "ttd", 16, 820_000, (0.68, 0.49), (0.685, 0.488), 1)])
    tt_emb = {"method": "ttd", "rank": 16, "ttd_min_rows": 10000}
    _write(tmp_path / "runs", 0, afm, ["compression=afm"], c_afm)
    _write(tmp_path / "runs", 1, svd, ["compression=svd"], c_svd)
    _write(tmp_path / "runs", 2, afm_base, ["compression=afm_emb"], {"baseline_epochs": 1, "emb": {"method": "afm"}})
    for job, init in ((3, "random"), (4, "svd")):
        _write(tmp_path / "runs", job, ttd, ["compression=ttd_emb", f"compression.emb.ttd_init={init}"],
               {"baseline_epochs": 1, "emb": {**tt_emb, "ttd_init": init}})
    bench = [_bench_row("baseline", 560_000_000, 10_000.0, 0.0), _bench_row("afm_mlp", 559_800_000, 11_000.0, 10.0),
             _bench_row("afm_emb", 37_770_000, 16_000.0, 60.0), _bench_row("svd_mlp", 559_700_000, 10_500.0, 5.0),
             _bench_row("svd_emb", None, None, None, skipped="out of memory"),
             _bench_row("ttd_emb", 20_000_000, 4_000.0, -60.0),
             {**_bench_row("afm_emb", 1.0, 1.0, 1.0), "model": "dcn"}]  # another model's row must not leak in
    bench_file = tmp_path / "bench" / "bench.json"
    bench_file.parent.mkdir()
    bench_file.write_text(json.dumps(bench))
    md, _, _ = write_report("table4", [tmp_path / "runs"], tmp_path / "out", bench=str(bench_file))
    assert "| Samples/s (bench) | Gain (bench) |" in md and "Bench params (criteo)" in md
    assert _row(md, "Baseline")[8:] == ["560.00M", "10,000", "–"]
    assert _row(md, "AFM", "MLP")[8:] == ["559.80M", "11,000", "+10.0 %"]
    assert _row(md, "", "EMB (after MLP)", "0.44M", "5.09x", "0.6990")[8:] == ["37.77M", "16,000", "+60.0 %"]
    assert _row(md, "SVD", "MLP")[8:] == ["559.70M", "10,500", "+5.0 %"]
    # AFM's embedding stage on the baseline (MLP untouched) was not timed; a skipped variant has no figures
    assert _row(md, "", "EMB (on the baseline)", "0.65M")[8:] == ["–", "–", "–"]
    assert _row(md, "", "EMB (after MLP)", "0.44M", "5.09x", "0.6800")[8:] == ["–", "–", "–"]
    # both TTD initialisations leave the same TT structure: the same bench row
    for title in ("TTD (random init, TT-Rec)", "TTD (TT-SVD init)"):
        assert _row(md, title)[8:] == ["20.00M", "4,000", "-60.0 %"]
    assert "paper's criteo shape (**not the shape of the trained models**; every table capped at 100,000 rows)" in md
    assert md.count("Bench columns on synthetic") == 1 and "ttd_emb: the same TT structure" in md


def test_table4_without_a_bench_has_no_throughput_columns_and_a_second_bench_dataset_is_not_guessed(tmp_path):
    s, c = _afm()
    _write(tmp_path / "runs", 0, s, ["compression=afm"], c)
    md, _, _ = write_report("table4", [tmp_path / "runs"], tmp_path / "out")
    assert "Samples/s" not in md and len(_row(md, "Baseline")) == 8
    bench = [_bench_row("baseline", 1, 1.0, 0.0), {**_bench_row("baseline", 1, 1.0, 0.0), "dataset": "avazu"}]
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    md, _, _ = write_report("table4", [tmp_path / "runs"], tmp_path / "out", bench=str(tmp_path / "bench.json"))
    assert "Samples/s" not in md and "no single dataset to pair with synthetic" in md


def test_stage_table_refuses_extra_columns_without_their_cells(tmp_path):
    from lightning_afm.report.tables.stage_table import stage_table

    s, c = _afm()
    _write(tmp_path, 0, s, ["compression=afm"], c)
    with pytest.raises(ValueError, match="extra_headers and extra together"):
        stage_table(find_runs(tmp_path), lambda row: row.method, "Method", extra_headers=["Samples/s"])


def test_table6_reads_the_relu_from_the_config_and_averages_seeds(tmp_path):
    for job, (relu, seed, auc) in enumerate([(True, 0, 0.7010), (False, 0, 0.6900), (True, 1, 0.7030)]):
        s, c = _afm(seed=seed, relu=relu, mlp=(auc, 0.47))
        s["stages"] = s["stages"][:1]
        c["emb"] = None
        _write(tmp_path, job, s, [f"compression.mlp.relu={str(relu).lower()}", f"seed={seed}"], c)
    md, _, _ = write_report("table6", [tmp_path])
    assert _row(md, "AFM with ReLU", "MLP")[6] == "0.7020 ± 0.0014 (n=2)"
    assert _row(md, "AFM without ReLU", "MLP")[6] == "0.6900"


@pytest.mark.parametrize("table, kind", [("table7", "emb"), ("table8", "mlp")])
def test_rank_sweeps_sort_ranks_show_kept_variance_and_plot(tmp_path, table, kind):
    for job, rank in enumerate([12, 2, 4]):
        layers = {f"{kind}.a": {"kept_variance": 0.5 + rank / 100}, f"{kind}.b": {"kept_variance": 0.6 + rank / 100}}
        st = _stage(kind, "afm", rank, 400_000 + 1000 * rank, (0.69 + rank / 1000, 0.49), (0.70 + rank / 1000, 0.48),
                    1, layers)
        _write(tmp_path, job, _summary(stages=[st]), [f"compression.{kind}.rank={rank}"],
               {"baseline_epochs": 1, kind: {"rank": rank}})
    md, _, png = write_report(table, [tmp_path], tmp_path / "out")
    ranks = [r[0] for r in _rows(md)]
    assert ranks == ["baseline (1 epoch)", "2", "4", "12"]
    assert _row(md, "4")[1:] == ["0.40M", "5.48x", "0.5400 / 0.6400", "0.6940", "0.4900", "0.7040", "0.4800"]
    assert png is not None and png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    assert f"![{table}]({table}.png)" in md


def test_table11_components_per_layer_and_plot(tmp_path):
    def layers(scale):
        return {f"mlp.{i}.linear": {"components_90": scale * (i + 1), "components_95": scale * (i + 2),
                                    "components_99": scale * (i + 5), "num_features": 400} for i in range(3)}

    for job, model in enumerate(["deepfm", "nfm"]):
        st = _stage("mlp", "afm", 16, 100, (None, None), (None, None), 1, layers(job + 1))
        _write(tmp_path, job, _summary(model=model, stages=[st]), [f"model={model}"], {"mlp": {"rank": 16}})
    md, _, png = write_report("table11", [tmp_path])
    assert _row(md, "DeepFM", "1 (`mlp.0.linear`)") == ["DeepFM", "1 (`mlp.0.linear`)", "400", "1", "2", "5"]
    assert _row(md, "", "3 (`mlp.2.linear`)", "400", "6") == ["", "3 (`mlp.2.linear`)", "400", "6", "8", "14"]
    assert "three thresholds only" in md
    assert png.stat().st_size > 5000


def test_table11_plots_the_whole_spectrum_when_recorded(tmp_path):
    layer = {"components_90": 2, "components_95": 3, "components_99": 4, "num_features": 5,
             "cumulative_ratio": [0.5, 0.92, 0.96, 0.995, 1.0]}
    st = _stage("mlp", "afm", 4, 100, (None, None), (None, None), 1, {"mlp.1.linear": layer})
    _write(tmp_path, 0, _summary(stages=[st]), [], {"mlp": {"rank": 4}})
    md, _, png = write_report("table11", [tmp_path])
    assert "three thresholds only" not in md and png.stat().st_size > 5000


def test_table13_mean_and_sample_std_over_seeds(tmp_path):
    aucs = [0.70, 0.71, 0.72]
    for seed, auc in enumerate(aucs):
        s, c = _afm(seed=seed, base=(auc, 0.48), emb=(auc + 0.001, 0.47))
        _write(tmp_path, seed, s, [f"seed={seed}"], c)
    md, _, png = write_report("table13", [tmp_path])
    base = _row(md, "Baseline")
    assert base[1] == "3 (0, 1, 2)" and base[2] == "0.7100 ± 0.0100" and base[5] == "0.7000, 0.7100, 0.7200"
    assert _row(md, "+AFM EMB")[2] == "0.7110 ± 0.0100"
    assert png.stat().st_size > 5000


def test_table14_compression_against_scratch(tmp_path):
    afm, c = _afm(emb=(0.7100, 0.4700))
    random_stages = [_stage("mlp", "random", 64, 1_997_564, (None, None), (None, None), 0),
                     _stage("emb", "random", 2, 435_414, (None, None), (None, None), 0)]
    scratch = _summary(stages=random_stages, final=(0.6900, 0.4900))
    scratch_1 = _summary(stages=random_stages, final=(0.7050, 0.4750), epochs=1)
    # the paper's first two lines: only the MLP compressed, against the same structure from scratch
    afm_mlp = _summary(stages=[_stage("mlp", "afm", 64, 1_997_564, (0.7000, 0.4800), (0.7060, 0.4760), 1)],
                       epochs=2)
    scratch_mlp = _summary(stages=[_stage("mlp", "random", 64, 1_997_564, (None, None), (None, None), 0)],
                           final=(0.7030, 0.4790), epochs=2)
    _write(tmp_path, 0, scratch, ["compression=scratch"], {"baseline_epochs": 0})
    _write(tmp_path, 1, afm, ["compression=afm"], c)
    _write(tmp_path, 2, afm_mlp, ["compression=afm_mlp"], {"baseline_epochs": 1})
    _write(tmp_path, 3, scratch_mlp, ["compression=scratch_mlp"], {"baseline_epochs": 0})
    _write(tmp_path / "one_epoch", 0, scratch_1, ["compression=scratch", "trainer.max_epochs=1"], {"baseline_epochs": 0})
    md, _, png = write_report("table14", [tmp_path])
    assert png is None
    assert _row(md, "Baseline (uncompressed)")[1:5] == ["2.22M", "1", "0.7000", "0.4800"]
    names = [r[0] for r in _rows(md)]
    assert names.index("AFM MLP (compress + finetune)") < names.index("From scratch MLP (same structure)") \
        < names.index("AFM MLP + EMB (compress + finetune)")
    assert _row(md, "From scratch MLP (same structure)")[1:] == ["2.00M", "2", "0.7030", "0.4790", "-0.0030"]
    assert _row(md, "AFM MLP + EMB (compress + finetune)")[1:5] == ["0.44M", "3", "0.7100", "0.4700"]
    scratch_rows = [r for r in _rows(md) if r[0] == "From scratch MLP + EMB (same structure)"]
    assert [r[1:] for r in scratch_rows] == [["0.44M", "1", "0.7050", "0.4750", "-0.0050"],
                                             ["0.44M", "3", "0.6900", "0.4900", "-0.0200"]]
    assert "structures differ" not in md
    scratch["params"] = 500_000
    (tmp_path / "0" / "summary.json").write_text(json.dumps(scratch))
    assert "structures differ" in write_report("table14", [tmp_path])[0]


def test_table15_one_row_per_learning_rate_with_train_and_test_figures(tmp_path):
    # (lr, seed, train auc, test auc): the paper's shape, best on both sets at 1e-3
    runs = [(1e-2, 0, 0.80, 0.70), (1e-3, 0, 0.84, 0.76), (1e-3, 1, 0.86, 0.78), (1e-4, 0, 0.83, 0.75)]
    for job, (lr, seed, train_auc, test_auc) in enumerate(runs):
        stage = _stage("mlp", "afm", 64, 1_997_564, (0.70, 0.48), (test_auc, 0.45), 1)
        stage.update(train_auc=train_auc, train_logloss=0.40, pre_finetune_train_auc=0.79)
        summary = _summary(seed=seed, stages=[stage], epochs=2)
        _write(tmp_path, job, summary, ["compression=afm_mlp", f"compression.mlp.lr={lr}", f"seed={seed}"],
               {"baseline_epochs": 1, "mlp": {"lr": lr, "rank": 64}})
    md, _, png = write_report("table15", [tmp_path])
    # the baseline every rate starts from (seeds 0 and 1), then the paper's order, largest rate first
    assert [r[0] for r in _rows(md)] == ["Baseline (no finetune)", "1e-2", "1e-3", "1e-4"]
    assert _row(md, "Baseline (no finetune)")[1:] == ["2", "–", "–", "0.7000 ± 0.0000 (n=2)",
                                                       "0.4800 ± 0.0000 (n=2)"]
    assert _row(md, "1e-2") == ["1e-2", "1", "0.8000", "0.4000", "0.7000", "0.4500"]
    assert _row(md, "1e-3")[1:3] == ["2", "0.8500 ± 0.0141 (n=2)"] and _row(md, "1e-3")[4] == "0.7700 ± 0.0141 (n=2)"
    assert "best train AUC at lr 1e-3, best test AUC at lr 1e-3: the same rate" in md
    assert png.stat().st_size > 5000
    # runs without the train split: dashes and the setting that gives them
    bare = tmp_path / "bare"
    _write(bare, 0, _summary(stages=[_stage("mlp", "afm", 64, 1, (0.7, 0.5), (0.7, 0.5), 1)]),
           ["compression=afm_mlp"], {"mlp": {"lr": 1e-3}})
    md, _, _ = write_report("table15", [bare], plot=False)
    assert _row(md, "1e-3")[2:4] == ["–", "–"] and "compression.eval_splits=[train,val,test]" in md


def test_table15_refuses_runs_that_differ_in_the_rank(tmp_path):
    for job, rank in enumerate((32, 64)):
        s, c = _afm()
        _write(tmp_path, job, s, ["compression=afm_mlp", f"compression.mlp.rank={rank}"], c)
    with pytest.raises(ValueError, match=r"differ in compression.mlp.rank"):
        write_report("table15", [tmp_path], plot=False)


def _timed(summary, baseline_epoch_s, stage_s, wall_s):
    """Add the callback's wall times: ``stage_s`` per stage is (statistics, swap, finetune, eval)."""
    summary.update(baseline_epoch_s=baseline_epoch_s, baseline_eval_s=2.0, wall_s=wall_s)
    for stage, (stats, swap, finetune, evals) in zip(summary["stages"], stage_s):
        stage.update(statistics_s=stats, rank_search_s=None, swap_s=swap, finetune_s=finetune, eval_s=evals)
    return summary


def test_table16_stage_times_in_the_paper_layout_and_piece_by_piece(tmp_path):
    for job, (model, seed, base_s) in enumerate([("deepfm", 0, 13144.0), ("deepfm", 1, 13156.0), ("dcn", 0, 50.0)]):
        s, c = _afm(model=model, seed=seed)
        _timed(s, base_s, [(60.0, 1.5, 525.5, 30.0), (40.0, 0.03, 445.97, 20.0)], wall_s=base_s + 1200)
        _write(tmp_path, job, s, [f"model={model}", "compression=afm", f"seed={seed}"], c)
    md, _, png = write_report("table16", [tmp_path])
    assert png is None
    # baseline 3h39m10s on average; +AFM MLP = statistics + swap + finetune = 587 s = 9m47s (the paper's figure)
    paper, pieces = md.split("## Every piece")
    assert _row(paper, "DeepFM", "synthetic")[2:] == ["3h39m10s (1 epoch)", "9m47s", "8m06s", "3h59m10s"]
    assert _row(paper, "DCN", "synthetic")[2] == "50.0 s (1 epoch)"
    assert _row(pieces, "DeepFM", "synthetic", "Baseline")[3:] == ["3h39m10s (1 epoch)", "–", "–", "–", "–",
                                                                    "2.0 s", "–"]
    detail = [r for r in _rows(pieces) if r[2] == "+AFM MLP"]
    assert detail[0][3:] == ["–", "1m00s", "–", "1.5 s", "8m46s", "30.0 s", "9m47s"]
    assert [r for r in _rows(pieces) if r[2] == "+AFM EMB"][0][6] == "0.03 s"
    assert "3090" in md and "Evaluations" in md
    # runs written before the callback timed its stages are left out, and the notes say so
    old, c = _afm()
    _write(tmp_path, 9, old, ["model=deepfm", "compression=afm"], c)
    assert "1 of 4 runs have no stage times" in write_report("table16", [tmp_path])[0]


def test_header_labels_data_machine_and_command(tmp_path):
    s, c = _afm()
    _write(tmp_path / "runs", 0, s, [], c)
    md, _, _ = write_report("table4", [tmp_path / "runs"], tmp_path / "out")
    assert "none is copied from the paper" in md
    assert "200,000 generated rows (train 160,000 / val 20,000 / test 20,000)" in md
    assert "Machine: not recorded" in md
    md, _, _ = write_report("4", [tmp_path / "runs"], tmp_path / "out", command="recipes/table4.sh small", wall_s=125)
    assert "Command: `recipes/table4.sh small` (2 min 05 s in all)" in md and "recorded by the recipe" in md
    # a later report without --command keeps what the recipe recorded
    md, _, _ = write_report("table4", [tmp_path / "runs"], tmp_path / "out")
    assert "recipes/table4.sh small" in md
    (tmp_path / "runs" / "9" / ".hydra").mkdir(parents=True)
    assert "Incomplete runs" in write_report("table4", [tmp_path / "runs"], tmp_path / "out")[0]


def test_cli_prints_the_table_and_explains_bad_input(tmp_path, capsys):
    s, c = _afm()
    _write(tmp_path, 0, s, [], c)
    main(["table4", str(tmp_path), "--no-plot"])
    out = capsys.readouterr()
    assert out.out.startswith("# Table 4") and "wrote" in out.err
    for argv, message in [(["table5", str(tmp_path)], "unknown table 'table5'"),
                          (["table4", str(tmp_path / "missing")], "does not exist"),
                          (["table6", str(tmp_path), "--bench", "x.json"],
                           "--bench only applies to table2 and table4")]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_runs_that_differ_in_a_setting_the_table_does_not_show_are_refused(tmp_path):
    # table4 shows methods, not ranks: runs of ranks 16 and 64 must not be averaged into one row
    for job, rank in enumerate((16, 64)):
        summary, compression = _afm()
        _write(tmp_path, job, summary, overrides=["compression=afm", f"compression.mlp.rank={rank}"],
               compression=compression)
    with pytest.raises(ValueError, match=r"differ in compression.mlp.rank \(16, 64\), which table4 does not show"):
        write_report("table4", [tmp_path], out=tmp_path / "out", plot=False)
    # table8 shows the MLP rank: the same runs are fine there
    write_report("table8", [tmp_path], out=tmp_path / "out8", plot=False)
    # seeds are averaged on purpose
    seeds = tmp_path / "seeds"
    for job, seed in enumerate((0, 1)):
        summary, compression = _afm(seed=seed)
        _write(seeds, job, summary, overrides=["compression=afm", f"seed={seed}"], compression=compression)
    write_report("table4", [seeds], out=tmp_path / "out_seeds", plot=False)


def test_table17_afm_against_pq_and_qr_counts_pq_codes(tmp_path):
    afm, c = _afm(emb=(0.7010, 0.4780))
    pq_stage = dict(_stage("emb", "pq", 2, 300_000, (0.6950, 0.4850), (0.6980, 0.4820), 1), stored_values=700_000)
    qr = _summary(stages=[_stage("emb", "qr", 8, 600_000, (0.5000, 0.6900), (0.6970, 0.4830), 1)], epochs=2)
    _write(tmp_path, 0, afm, ["compression=afm"], c)
    _write(tmp_path, 1, _summary(stages=[pq_stage], epochs=2), ["compression=pq_emb"], {"baseline_epochs": 1})
    _write(tmp_path, 2, qr, ["compression=qr_emb"], {"baseline_epochs": 1})
    md, _, _ = write_report("table17", [tmp_path])
    assert [r[0] for r in _rows(md)] == ["Baseline", "PQ", "QR", "Ours (AFM MLP + EMB)"]
    assert _row(md, "Baseline")[1:] == ["2.22M", "1.00x", "0.7000", "0.4800", "574.46M"]
    # PQ's params are its stored values: the codes counted (the run's `params` alone would be 0.30M)
    assert _row(md, "PQ")[1:] == ["0.70M", "3.16x", "0.6980", "0.4820", "102.08M"]
    assert _row(md, "QR")[1:] == ["0.60M", "3.69x", "0.6970", "0.4830", "106.38M"]
    assert _row(md, "Ours (AFM MLP + EMB)")[1:] == ["0.44M", "5.09x", "0.7010", "0.4780", "101.42M"]
