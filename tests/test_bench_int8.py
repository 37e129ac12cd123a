"""benchmarks/bench_int8.py: one table of fp32 / int8 / AFM / AFM + int8 from trained runs, figures that add up."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the scripts import each other

import bench_int8  # noqa: E402


def test_the_table_compares_the_four_exports_of_two_runs(criteo_afm_run, tmp_path, capsys):
    run_dir, _, _ = criteo_afm_run
    out = tmp_path / "int8.md"
    # the same run as both: the mechanism is what is tested here, not AFM's gain
    bench_int8.main([str(run_dir), str(run_dir), "--rows", "500", "--seconds", "0.05", "--rounds", "1", "--out", str(out)])
    table = out.read_text()
    assert table in capsys.readouterr().out  # printed as well as written
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines[1:]] == ["| fp32 baseline", "| int8 alone", "| AFM alone",
                                                            "| AFM + int8"]
    assert "logical CPUs" in table and "1 thread" in table and "bench_int8.py" in table
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    by_key = {(r["run"], r["int8"]): r for r in results}
    fp32, int8 = by_key[("baseline", False)], by_key[("baseline", True)]
    assert int8["int8_bar_passed"]
    # at this tiny size the int8 graph's extra nodes outweigh its smaller tables: the ratio is shown as it is
    assert f"| {int8['bytes'] / 1e6:.2f} MB | {fp32['bytes'] / int8['bytes']:.1f}x |" in lines[2]
    assert int8["auc"] - fp32["auc"] == pytest.approx(int8["int8_auc_change"], abs=1e-6)
    for r in results:
        assert r["batch_1"]["calls"] >= 3 and r["batch_10000"]["samples_per_s"] > 0
    # the fp32 AUC is the model's own: an independent scoring of the same rows in eager PyTorch
    model, categorical, numeric, labels, _ = bench_int8.load_run(run_dir, 500)
    with torch.inference_mode():
        p = torch.sigmoid(model.eval()(torch.from_numpy(categorical), torch.from_numpy(numeric))).double().numpy()
    ranks = np.argsort(np.argsort(p)) + 1  # Mann-Whitney: AUC from the ranks of the positives
    positives = labels == 1
    auc = (ranks[positives].sum() - positives.sum() * (positives.sum() + 1) / 2) / (positives.sum() * (~positives).sum())
    assert fp32["auc"] == pytest.approx(auc, abs=1e-5)


def test_a_lone_checkpoint_without_its_test_split_is_refused(criteo_afm_run, tmp_path):
    run_dir, _, _ = criteo_afm_run
    alone = tmp_path / "alone.ckpt"
    alone.write_bytes((run_dir / "last.ckpt").read_bytes())
    with pytest.raises(SystemExit, match="no labelled test split"):
        bench_int8.load_run(alone, 100)
