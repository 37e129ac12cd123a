"""lightning-afm-bench end to end on tiny shapes: config, rows, parameter counts, files, errors, skips."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from lightning_afm.bench.cli import run, settings_from_config
from lightning_afm.bench.deepctr import build_deepctr_model
from lightning_afm.bench.shapes import paper_shape
from lightning_afm.compress import (
    OutputStatistics,
    compress_embeddings_ttd,
    compress_targets,
    fold_into_first_linear,
    resolve_targets,
)
from lightning_afm.models import DEFAULT_EMBEDDING_TARGETS, DEFAULT_MLP_TARGETS, MODELS, build_model, count_parameters

# one thread: the tiny models' SVDs and eigendecompositions are several times slower on two busy cores;
# eager: these tests check rows and counts, runtime=best (exports per variant) has its own tests
TINY = ["vocab_cap=50", "batch=64", "rounds=1", "batches_per_round=1", "warmup=0", "threads=1", "runtime=eager"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fake_stats(model, names, width_of):
    """Valid statistics (zero mean, identity covariance) for AFM: only the structure matters here."""
    return {n: OutputStatistics(torch.zeros(width_of(n), dtype=torch.float64),
                                torch.eye(width_of(n), dtype=torch.float64), 100) for n in names}


def _independent_count(name: str, dataset: str, variant: str, cap: int) -> int:
    """The variant built for real on the CPU with the compress API, as a training run would."""
    shape = paper_shape(dataset, cap)
    if variant == "deepctr_torch":
        return count_parameters(build_deepctr_model(name, shape))
    model = build_model(name, shape.schema(), embedding_dim=shape.embedding_dim, mlp_hidden=shape.mlp_hidden)
    method = variant.split("_")[0]
    if method in ("afm", "svd"):
        names = resolve_targets(model, DEFAULT_MLP_TARGETS, "linear")
        stats = _fake_stats(model, names, lambda n: model.get_submodule(n).out_features) if method == "afm" else None
        compress_targets(model, names, stats, shape.mlp_rank, method=method, relu=True)
    if variant in ("afm_emb", "svd_emb"):
        names = resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding")
        stats = _fake_stats(model, names, lambda n: shape.embedding_dim) if method == "afm" else None
        compress_targets(model, names, stats, shape.emb_rank, method=method)
        if MODELS[name].MLP_READS_EMBEDDINGS:
            fold_into_first_linear(model)
    if variant == "ttd_emb":
        # TT-Rec's selection: tables that reach the (capped) threshold, and their LR tables
        tables = [n for n in resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding")
                  if model.get_submodule(n).num_embeddings >= min(100_000, cap)]
        compress_embeddings_ttd(model, tables + [n.replace("embeddings.", "linear.") for n in tables], 16,
                                init="random")
    return count_parameters(model)


def test_default_config_is_the_papers_benchmark(compose_bench):
    settings = settings_from_config(compose_bench([]))
    assert settings.models == ["dcn", "deepfm", "nfm", "autoint", "fibinet", "dcnv2", "gdcn"]
    assert settings.datasets == ["criteo", "avazu"]
    assert settings.variants == ["baseline", "afm_mlp", "afm_emb", "svd_mlp", "svd_emb", "ttd_emb", "deepctr_torch"]
    assert (settings.batch, settings.vocab_cap, settings.tt_rank, settings.threads) == (10000, None, 16, None)


def test_tiny_run_writes_consistent_rows(tmp_path, compose_bench):
    cfg = compose_bench(TINY + ["models=[deepfm,nfm]", "datasets=[criteo]", f"out={tmp_path}"])
    rows = run(cfg)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved == json.loads(json.dumps(rows))
    assert [(r["model"], r["variant"]) for r in saved] == [
        (m, v) for m in ("deepfm", "nfm")
        for v in ("baseline", "afm_mlp", "afm_emb", "svd_mlp", "svd_emb", "ttd_emb", "deepctr_torch")
    ]
    base = {r["model"]: r["samples_per_s"] for r in saved if r["variant"] == "baseline"}
    for r in saved:
        assert (r["dataset"], r["batch"], r["vocab_cap"], r["threads"]) == ("criteo", 64, 50, 1)
        assert r["skipped"] is None and r["samples_per_s"] > 0 and r["timed_batches"] == 1
        assert r["gain_pct"] == pytest.approx(100 * (r["samples_per_s"] / base[r["model"]] - 1))
        assert r["params"] == _independent_count(r["model"], "criteo", r["variant"], 50), (r["model"], r["variant"])
    afm_emb = [r for r in saved if r["variant"] == "afm_emb"]
    assert {r["model"]: r["folded"] for r in afm_emb} == {"deepfm": True, "nfm": False}
    assert {r["model"]: r["paper_gain_pct"] for r in afm_emb} == {"deepfm": 59.2, "nfm": 37.4}
    assert all(r["meets_paper"] == (r["gain_pct"] >= r["paper_gain_pct"]) for r in afm_emb)
    deepctr = [r for r in saved if r["variant"] == "deepctr_torch"]
    assert all(r["baseline_over_deepctr"] == pytest.approx(base[r["model"]] / r["samples_per_s"]) for r in deepctr)
    md = (tmp_path / "bench.md").read_text()
    assert "| DeepFM |" in md and "| NFM |" in md and "vocab_cap=50" in md
    assert "Paper's +AFM EMB gain (paper's machine)" in md and "not our measurement" in md


def test_avazu_and_gdcn_without_deepctr_model(tmp_path, compose_bench):
    cfg = compose_bench(TINY + ["models=[gdcn]", "datasets=[avazu]", "variants=[afm_emb,deepctr_torch]",
                           "mlp_rank=8", "emb_rank=4", f"out={tmp_path}"])
    rows = run(cfg)
    # the baseline is always measured: gains need it
    assert [r["variant"] for r in rows] == ["baseline", "afm_emb", "deepctr_torch"]
    assert rows[1]["ranks"] == {"mlp": 8, "emb": 4}
    assert rows[2]["skipped"].startswith("DeepCTR-Torch has no gdcn") and rows[2]["samples_per_s"] is None
    assert "avazu/gdcn/DeepCTR-Torch skipped" in (tmp_path / "bench.md").read_text()


def test_missing_deepctr_is_skipped_with_a_message(tmp_path, monkeypatch, compose_bench):
    monkeypatch.setitem(sys.modules, "deepctr_torch", None)  # import deepctr_torch now raises ImportError
    cfg = compose_bench(TINY + ["models=[dcn]", "datasets=[criteo]", "variants=[baseline,deepctr_torch]", f"out={tmp_path}"])
    rows = run(cfg)
    assert rows[0]["samples_per_s"] > 0
    assert "not importable" in rows[1]["skipped"] and "pip install" in rows[1]["skipped"]
    assert rows[1]["params"] is None


@pytest.mark.parametrize(
    "override,message",
    [
        ("models=[deepfm,xdeepfm]", r"unknown model \['xdeepfm'\]; valid models: \['dcn', 'deepfm'"),
        ("datasets=[criteo,kdd12]", r"unknown dataset \['kdd12'\]; valid datasets: \['criteo', 'avazu'\]"),
        ("variants=[afm,qat]", r"unknown variants \['afm', 'qat'\]; valid variants: \['baseline', 'afm_mlp'"),
        ("batch=0", "batch must be a positive integer"),
        ("vocab_cap=-3", "vocab_cap must be a positive integer"),
        ("models=[]", "no model selected"),
    ],
)
def test_bad_selection_is_a_clear_error(override, message, compose_bench):
    with pytest.raises(ValueError, match=message):
        settings_from_config(compose_bench([override]))


def test_main_reports_bad_selection_without_traceback(tmp_path, capsys, monkeypatch):
    from lightning_afm.bench import cli

    monkeypatch.setattr(sys, "argv", ["lightning-afm-bench", "models=[nope]", f"out={tmp_path}",
                                      f"hydra.run.dir={tmp_path}/hydra"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "unknown model ['nope']" in capsys.readouterr().err


def test_threads_setting_is_restored_after_the_run(tmp_path, compose_bench):
    torch.set_num_threads(2)
    rows = run(compose_bench(TINY + ["models=[nfm]", "datasets=[criteo]", "variants=[baseline]", f"out={tmp_path}"]))
    assert rows[0]["threads"] == 1 and torch.get_num_threads() == 2


def test_flat_structure_keys_reach_the_variant_settings(compose_bench):
    """The options BenchSettings inherits from VariantOptions stay flat config keys and reach every variant."""
    settings = settings_from_config(compose_bench(
        ["mlp_rank=8", "tt_rank=4", "tt_min_rows=7", "tt_lr=false", "afm_relu=false", "svd_relu=false", "fold=false"]))
    vs = settings.variant_settings(paper_shape("criteo", 50))
    assert (vs.mlp_rank, vs.emb_rank) == (8, paper_shape("criteo").emb_rank)  # null emb_rank: the paper's
    assert (vs.tt_rank, vs.tt_min_rows, vs.tt_lr, vs.afm_relu, vs.svd_relu, vs.fold) == (4, 7, False, False, False, False)
    with pytest.raises(ValueError, match="tt_rank must be a positive integer, got 0"):
        settings_from_config(compose_bench(["tt_rank=0"]))  # refused before any model is built
