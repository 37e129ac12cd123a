"""benchmarks/bench_serving.py: the Predictor cells (the whole call a handler makes) next to the bare runtimes."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the scripts import each other

import bench_serving  # noqa: E402


def test_predictor_cells_are_timed_with_the_runtimes(tmp_path):
    out = tmp_path / "serving.md"
    runtimes = ["onnx", "predictor", "predictor_onnx", "predictor_auto"]
    bench_serving.main(["--threads", "1", "--batches", "1", "3", "--runtimes", *runtimes, "--seconds", "0.05",
                        "--rounds", "1", "--vocab-cap", "1000", "--out", str(out)])
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    cells = {(r["structure"], r["runtime"], r["batch"]) for r in results}
    assert cells == {(s, rt, b) for s in bench_serving.STRUCTURES for rt in runtimes for b in (1, 3)}
    assert all(r["calls"] >= 3 and r["p99_ms"] >= r["p50_ms"] > 0 for r in results)
    assert "| predictor | predictor_onnx | predictor_auto |" in out.read_text()
    assert set(bench_serving.PREDICTOR_RUNTIMES).isdisjoint(bench_serving.RUNTIMES)  # not in the default table
