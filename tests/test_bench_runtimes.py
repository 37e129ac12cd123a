"""The bench's runtimes: same outputs as eager, untimed compilation, refusals reported, the setting recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lightning_afm.bench.benchmark import BenchSettings, run_benchmark
from lightning_afm.bench.report import to_markdown
from lightning_afm.bench.runtimes import RUNTIMES, RuntimeUnavailable, check_runtime, prepare
from lightning_afm.bench.shapes import paper_shape
from lightning_afm.bench.throughput import make_batches
from lightning_afm.bench.variants import VariantSettings, build_twin, build_variant
from lightning_afm.inference import optimize_for_inference


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(model: str, dataset: str, variant: str) -> tuple[nn.Module, list]:
    shape = paper_shape(dataset, 30)
    settings = VariantSettings(mlp_rank=4, emb_rank=2)
    built = build_variant(model, shape, variant, settings, build_twin(model, shape)).eval()
    return built, make_batches(shape, batch=16, count=2, seed=3)


def _outputs(prepared) -> list[np.ndarray]:
    timed = prepared.timed
    with torch.inference_mode():
        return [np.asarray(timed.forward(x), dtype=np.float64).reshape(-1) for x in timed.inputs]


@pytest.mark.parametrize("runtime", ["torchscript", "onnx", "compile"])
@pytest.mark.parametrize(("model", "dataset", "variant"), [("deepfm", "criteo", "afm_emb"), ("nfm", "avazu", "baseline")])
def test_runtimes_give_the_eager_outputs_on_every_batch(runtime, model, dataset, variant):
    """Avazu has no numeric field: the exported graph takes the ids alone."""
    built, batches = _tiny(model, dataset, variant)
    fast = optimize_for_inference(built)
    expected = _outputs(prepare(fast, "eager", batches))
    assert expected[0].shape == (16,) and not np.allclose(expected[0], expected[1])  # distinct batches
    got = _outputs(prepare(fast, runtime, batches, export_fallback=built))
    assert len(got) == len(batches)  # every batch, not only the export example
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_compile_is_warmed_up_before_timing():
    built, batches = _tiny("nfm", "criteo", "baseline")
    fast = optimize_for_inference(built)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    timed = prepare(fast, "compile", batches).timed
    compiled_frames = counters["stats"]["unique_graphs"]
    assert compiled_frames >= 1  # compiled inside prepare
    with torch.inference_mode():
        for x in timed.inputs:
            timed.forward(x)
    assert counters["stats"]["unique_graphs"] == compiled_frames  # the timed calls compile nothing


class _Reinterprets(nn.Module):
    """Reads float rows as integer words, which ONNX cannot express (as the inference form's lookups)."""

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return numeric.contiguous().view(torch.int32).sum(dim=1).float() * 0 + _Plain.forward(self, categorical, numeric)


class _Plain(nn.Module):
    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        # reads both inputs: an exporter drops an unused one
        return numeric.sum(dim=1) + categorical.sum(dim=1).float()


def test_a_refused_export_falls_back_to_the_plain_model_and_says_so():
    batches = make_batches(paper_shape("criteo", 10), batch=8, count=1, seed=0)
    with pytest.raises(RuntimeUnavailable, match=r"runtime=onnx cannot run the inference form \(.+\)"):
        prepare(_Reinterprets(), "onnx", batches)
    prepared = prepare(_Reinterprets(), "onnx", batches, export_fallback=_Plain())
    assert prepared.note.startswith("runtime=onnx cannot run the inference form") and "plain model" in prepared.note
    np.testing.assert_allclose(_outputs(prepared)[0], _Plain()(batches[0].categorical, batches[0].numeric).numpy(), rtol=1e-6)
    assert prepare(_Plain(), "onnx", batches).note is None


def test_runtime_setting_is_checked():
    assert check_runtime("ONNX") == "onnx" and RUNTIMES[0] == "eager"
    with pytest.raises(ValueError, match=r"unknown runtime 'tvm'; choose one of \['eager', 'torchscript'"):
        BenchSettings(runtime="tvm")
    assert BenchSettings().runtime == "best" and BenchSettings().best_of == ["eager", "torchscript", "onnx"]
    assert BenchSettings(runtime="BEST", best_of=["ONNX", "eager", "onnx"]).best_of == ["onnx", "eager"]
    with pytest.raises(ValueError, match=r"unknown runtime 'tvm'; .* or 'best'"):
        BenchSettings(runtime="tvm")
    with pytest.raises(ValueError, match=r"unknown runtime 'jit'"):
        BenchSettings(best_of=["eager", "jit"])
    with pytest.raises(ValueError, match="best_of is empty"):
        BenchSettings(best_of=[])
    with pytest.raises(ValueError, match="select_rounds must be a positive integer"):
        BenchSettings(select_rounds=0)
    with pytest.raises(ValueError, match="at least one batch"):
        prepare(_Plain(), "onnx", [])


def test_a_run_records_its_runtime_and_reports_refusals(monkeypatch):
    import lightning_afm.bench.benchmark as benchmark

    real = benchmark.prepare

    def refuse_compressed(module, runtime, batches, export_fallback=None):
        if runtime == "torchscript" and export_fallback is not None and export_fallback is not built["baseline"]:
            raise RuntimeUnavailable("runtime=torchscript cannot run this model (test)")
        return real(module, runtime, batches, export_fallback)

    built: dict[str, nn.Module] = {}
    real_variant = benchmark.build_variant

    def remember(model_name, shape, variant, *args, **kwargs):
        built[variant] = real_variant(model_name, shape, variant, *args, **kwargs)
        return built[variant]

    monkeypatch.setattr(benchmark, "prepare", refuse_compressed)
    monkeypatch.setattr(benchmark, "build_variant", remember)
    settings = BenchSettings(models=["deepfm"], datasets=["criteo"], variants=["baseline", "afm_emb"], vocab_cap=30,
                             batch=16, rounds=1, batches_per_round=1, warmup=0, runtime="torchscript")
    rows = json.loads(json.dumps(run_benchmark(settings)))
    assert [r["runtime"] for r in rows] == ["torchscript", "torchscript"]
    base, emb = rows
    assert base["skipped"] is None and base["samples_per_s"] > 0 and base["macs_per_row"] > 0
    assert emb["skipped"] == "runtime=torchscript cannot run this model (test)" and emb["gain_pct"] is None
    md = to_markdown(rows, {"settings": {"warmup": 0}})
    assert "as TorchScript (`runtime=torchscript`)" in md and "+AFM EMB skipped: runtime=torchscript" in md


def test_the_config_carries_the_runtime(compose_bench):
    from lightning_afm.bench.cli import settings_from_config

    default = settings_from_config(compose_bench([]))
    assert (default.runtime, default.best_of, default.select_rounds) == ("best", ["eager", "torchscript", "onnx"], 3)
    assert settings_from_config(compose_bench(["best_of=[eager,compile]"])).best_of == ["eager", "compile"]
    assert settings_from_config(compose_bench(["runtime=compile"])).runtime == "compile"
    with pytest.raises(ValueError, match="unknown runtime 'jit'"):
        settings_from_config(compose_bench(["runtime=jit"]))
