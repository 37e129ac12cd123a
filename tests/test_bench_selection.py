"""``runtime=best``: the fastest candidate is kept, a failing or inexact one is left out with why, rows record it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import lightning_afm.bench.selection as selection
from lightning_afm.bench.benchmark import BenchSettings, run_benchmark
from lightning_afm.bench.report import to_markdown
from lightning_afm.bench.runtimes import Prepared, RuntimeUnavailable, prepare
from lightning_afm.bench.selection import choose_runtime, outputs_mismatch
from lightning_afm.bench.shapes import paper_shape
from lightning_afm.bench.throughput import Timed, make_batches
from lightning_afm.bench.variants import VariantSettings, build_twin, build_variant
from lightning_afm.inference import optimize_for_inference

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Plain(nn.Module):
    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return numeric.sum(dim=1) + categorical.sum(dim=1).float()


class _Reinterprets(nn.Module):
    """Reads float rows as integer words, which no exporter here can write (as the inference form's lookups)."""

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return numeric.contiguous().view(torch.int32).sum(dim=1).float() * 0 + _Plain.forward(self, categorical, numeric)


def _batches(count: int = 2):
    return make_batches(paper_shape("criteo", 10), batch=8, count=count, seed=0)


def test_the_fastest_candidate_by_median_is_chosen(monkeypatch):
    """Timings faked: onnx's median is the lowest although its worst batch is the slowest."""
    fake = {"eager": [0.02, 0.02, 0.02], "torchscript": [0.03, 0.01, 0.03], "onnx": [0.015, 0.015, 0.5]}

    def timed(runners, rounds, warmup=1, on_round=None):
        assert warmup == 0 and rounds == 3  # every candidate already ran on every batch (the output check)
        return {name: fake[name] for name in runners}

    monkeypatch.setattr(selection, "time_interleaved", timed)
    choice = choose_runtime(_Plain(), _batches(), candidates=["eager", "torchscript", "onnx"], rounds=3)
    assert choice.runtime == "onnx" and choice.refused == {}
    assert choice.samples_per_s == pytest.approx({"eager": 400.0, "torchscript": 8 / 0.03, "onnx": 8 / 0.015})
    assert set(choice.prepare_s) == {"eager", "torchscript", "onnx"}
    record = json.loads(json.dumps(choice.record()))
    assert record["samples_per_s"]["onnx"] == pytest.approx(8 / 0.015) and record["refused"] == {}


def test_a_failing_runtime_is_left_out_with_its_reason():
    choice = choose_runtime(_Reinterprets(), _batches(), candidates=["onnx", "eager"], rounds=1)
    assert choice.runtime == "eager" and choice.samples_per_s == {}  # the only one left: not timed
    assert choice.refused["onnx"].startswith("runtime=onnx cannot run the inference form")
    with pytest.raises(RuntimeUnavailable, match=r"no runtime of best_of can run it: runtime=onnx cannot run"):
        choose_runtime(_Reinterprets(), _batches(), candidates=["onnx"], rounds=1)


def test_a_runtime_with_other_outputs_is_left_out(monkeypatch):
    real = selection.prepare

    def off_by_1e2(module, runtime, batches, export_fallback=None):
        prepared = real(module, runtime, batches, export_fallback)
        if runtime != "torchscript":
            return prepared
        inner = prepared.timed
        return Prepared(Timed(lambda x: np.asarray(inner.forward(x)) + 1e-2, inner.inputs))

    monkeypatch.setattr(selection, "prepare", off_by_1e2)
    choice = choose_runtime(_Plain(), _batches(), candidates=["torchscript", "eager"], rounds=1)
    assert choice.runtime == "eager"
    assert "runtime=torchscript does not give the eager outputs (batch 0: 8 of 8 outputs differ" in \
        choice.refused["torchscript"] and "tolerance 1e-05" in choice.refused["torchscript"]


class _Weighted(_Plain):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(250, 4))  # 4,000 bytes
        self.register_buffer("shared", self.weight.data[:10], persistent=False)  # same storage: not counted again

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return super().forward(categorical, numeric) * self.weight[0, 0]


def test_exporting_runtimes_are_left_out_above_the_size_limit():
    assert selection.tensor_gb(_Weighted()) == pytest.approx(4e-6)
    choice = choose_runtime(_Weighted(), _batches(), rounds=1, export_limit_gb=3e-6)
    assert choice.runtime == "eager" and choice.samples_per_s == {}  # a lone candidate is not timed
    assert set(choice.refused) == {"torchscript", "onnx"}
    assert "runtime=onnx would copy the model's tensors, 0.0 GB for the baseline (more than export_limit_gb=3e-06)" \
        == choice.refused["onnx"]
    assert set(choose_runtime(_Weighted(), _batches(), rounds=1, export_limit_gb=5e-6).samples_per_s) == \
        {"eager", "torchscript", "onnx"}
    # the size given (the bench: the baseline's) decides, not the module's own
    assert choose_runtime(_Weighted(), _batches(), rounds=1, export_limit_gb=5e-6, held_gb=1.0).runtime == "eager"


def test_outputs_mismatch_against_numpy():
    expected = [np.array([1.0, -2.0, 1e3])]
    assert outputs_mismatch([expected[0] * (1 + 5e-6)], expected, 1e-5) is None  # relative part
    assert outputs_mismatch([expected[0] + np.array([0, 5e-5, 0])], expected, 1e-5).startswith("batch 0: 1 of 3")
    assert "2 outputs, eager gives 3" in outputs_mismatch([np.zeros(2)], expected, 1e-5)


@pytest.mark.parametrize(("model", "dataset"), [("autoint", "criteo"), ("dcn", "avazu")])
def test_the_chosen_runtime_gives_the_eager_outputs(model, dataset):
    shape = paper_shape(dataset, 30)
    built = build_variant(model, shape, "afm_emb", VariantSettings(mlp_rank=4, emb_rank=2), build_twin(model, shape))
    fast = optimize_for_inference(built, fuse=True)
    batches = make_batches(shape, batch=16, count=2, seed=5)
    choice = choose_runtime(fast, batches, rounds=1, export_fallback=built)
    assert set(choice.samples_per_s) | set(choice.refused) == {"eager", "torchscript", "onnx"}
    timed = choice.prepared.timed
    eager = prepare(fast, "eager", batches).timed
    with torch.inference_mode():
        for x, b in zip(timed.inputs, eager.inputs, strict=True):
            np.testing.assert_allclose(np.asarray(timed.forward(x), dtype=np.float64).reshape(-1),
                                       eager.forward(b).double().numpy(), rtol=1e-5, atol=1e-5)


def test_a_best_run_records_each_variants_runtime():
    settings = BenchSettings(models=["deepfm"], datasets=["criteo"], variants=["baseline", "afm_emb", "deepctr_torch"],
                             vocab_cap=30, batch=16, rounds=1, batches_per_round=2, warmup=0, runtime="best")
    rows = json.loads(json.dumps(run_benchmark(settings)))
    ours = [r for r in rows if r["variant"] != "deepctr_torch"]
    for row in ours:
        assert row["runtime_setting"] == "best" and row["skipped"] is None
        speeds = row["runtime_selection"]["samples_per_s"]
        assert set(speeds) | set(row["runtime_selection"]["refused"]) == {"eager", "torchscript", "onnx"}
        assert row["runtime"] == max(speeds, key=speeds.get)
    deepctr = [r for r in rows if r["variant"] == "deepctr_torch"]
    assert all(r["runtime"] == "eager" and r["runtime_selection"] is None for r in deepctr if not r["skipped"])
    md = to_markdown(rows, {"settings": {"warmup": 0, "best_of": ["eager", "torchscript", "onnx"], "select_rounds": 1}})
    assert "on the fastest of eager, torchscript, onnx for each variant (`runtime=best`)" in md
    assert "| Model | Baseline | +AFM EMB |" in md
    assert f"| DeepFM | {ours[0]['runtime']} (" in md


def test_docstring_example():
    import doctest

    failures, tried = doctest.testmod(selection)
    assert tried > 0 and failures == 0
