"""benchmarks/accuracy_claim.py: the well-trained baseline is chosen on validation, the claim table adds up."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy_claim.py"


def _load():
    spec = importlib.util.spec_from_file_location("accuracy_claim", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_claim_on_a_small_generated_criteo_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_AFM_CACHE", str(tmp_path / "cache"))
    claim = _load()
    small = ["model.embedding_dim=4", "model.mlp_hidden=[16,16,16]", "finetune.mlp_rank=4", "finetune.emb_rank=2",
             "data.batch_size=200", "finetune.mlp_batch_size=400", "finetune.emb_batch_size=400"]
    report = claim.main(["--data", "gen:3000:5", "--seeds", "0", "1", "--baseline-lrs", "1e-2", "1e-3",
                         "--workdir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                         "--set", *small, "--baseline-set", *small])
    d = report["datasets"]["gen:3000:5"]
    cache = json.loads((tmp_path / "data" / "baselines.json").read_text())
    # the lr is chosen on the first seed's validation AUC (over the grid and any extension past
    # the edge that won) and kept for the second seed, which trains no baseline of its own
    tried = {float(k.split("|")[2]): v["val_auc"] for k, v in cache.items() if k.split("|")[1] == "0"}
    assert {1e-2, 1e-3} <= set(tried) and len(tried) <= 2 + claim.MAX_GRID_EXTENSIONS
    chosen = max(tried, key=tried.get)
    assert {r["baseline_lr"] for r in d["runs"]} == {chosen}
    if chosen in (min(tried), max(tried)):  # still at an edge: only when the extensions ran out
        assert len(tried) == 2 + claim.MAX_GRID_EXTENSIONS
    assert not any(k.split("|")[1] == "1" for k in cache)
    # each run's baseline is the compression run's own baseline epoch, and the means add up
    for run in d["runs"]:
        assert run["params"] < run["baseline_params"] and [s["name"] for s in run["stages"]] == ["mlp", "emb"]
    assert d["delta_auc"] == pytest.approx(d["final_auc"] - d["baseline_auc"], abs=1e-9)
    assert d["holds"] == (d["delta_auc"] >= -0.001 and d["delta_logloss"] <= 0.002)
    assert "gen:3000:5" in (tmp_path / "out" / "claim.md").read_text()


@pytest.mark.parametrize("spec", ["gen:1000:3", "criteo-sample", "synthetic"])
def test_claim_runs_with_the_settings_of_its_table_whatever_the_data_config_says(spec, tmp_path):
    from hydra import compose, initialize_config_module

    claim = _load()
    overrides = [*claim.data_overrides(spec, tmp_path), *claim.TABLE_SETTINGS]
    with initialize_config_module(config_module="lightning_afm.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    assert (cfg.model.weight_decay, cfg.model.l2, cfg.model.mlp_init) == (0.0, "rows", "torch")
    if spec.startswith("gen:"):  # data=criteo alone would give the paper's
        with initialize_config_module(config_module="lightning_afm.conf", version_base="1.3"):
            paper = compose(config_name="config", overrides=claim.data_overrides(spec, tmp_path))
        assert (paper.model.weight_decay, paper.model.l2) == (1e-3, "full")
