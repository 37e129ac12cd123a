"""Serving latency of the baseline and +AFM EMB at the paper's Criteo shape, every runtime side by side.

    .venv/bin/python benchmarks/bench_serving.py                       # DeepFM, tables capped at 100,000 rows
    .venv/bin/python benchmarks/bench_serving.py --model dcn --threads 1 --batches 1 64 --out serving.md

For each thread count and batch size, every (structure, runtime) pair is timed in the same
rounds, interleaved, so that the machine's noise falls on all of them alike. Runtimes:

- ``eager``: the training model's plain forward under ``torch.inference_mode``;
- ``inference``: :func:`lightning_afm.inference.optimize_for_inference` (batched gathers, fused
  projections, aligned cross nets);
- ``torchscript``: the inference form compiled by ``torch.jit.script``, sharing the model's weights:
  what ``Predictor(runtime="auto")`` (the default) runs for requests above 256 rows (``serve.runtime.inference_module``),
  except where the inference form runs a native kernel (AutoInt), which it runs as ``inference``
  (on one thread above 48 rows already: ``serve.runtime.AUTO_NATIVE_ONNX_MAX_ROWS``);
- ``onnx``: the export's form (``lightning_afm.export.artifact.serving_forms``: the inference
  layer with every table fused, for the baseline too) in ONNX Runtime, as ``Predictor(runtime="onnx")``
  runs it (``serve.onnx_runtime.OnnxRunner``: checked against eager PyTorch when built);
- ``onnx_int8``: int8 tables and ONNX Runtime's dynamic int8 products;
- ``predictor``, ``predictor_onnx``, ``predictor_auto`` (only when named in ``--runtimes``):
  ``Predictor.predict_encoded`` on numpy rows, the whole call a handler makes, with
  ``runtime="torchscript"``, ``"onnx"`` and ``"auto"`` (the default).

Per cell: p50 and p99 latency of one call (ms) and samples/s (batch / mean latency). Ids are
Zipf-distributed as in the throughput benchmark. The table says which runtime wins per batch
size and whether the best +AFM EMB runtime beats every baseline runtime. The CPU is printed with
the figures: the ratios, not the absolute numbers, are what carries over to another machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lightning_afm.bench.report import machine_info
from lightning_afm.bench.shapes import paper_shape
from lightning_afm.bench.throughput import make_batches
from lightning_afm.bench.variants import VariantSettings, build_twin, build_variant
from lightning_afm.export import formats
from lightning_afm.export.artifact import serving_forms
from lightning_afm.export.int8 import quantize_onnx_matmuls, quantize_tables
from lightning_afm.inference import optimize_for_inference
from lightning_afm.runtime import reuse_freed_memory
from lightning_afm.serve import Predictor
from lightning_afm.serve.onnx_runtime import OnnxRunner, session_options
from lightning_afm.serve.runtime import inference_module

STRUCTURES = ("baseline", "afm_emb")
RUNTIMES = ("eager", "inference", "torchscript", "onnx", "onnx_int8")
#: Not in the default table: ``Predictor.predict_encoded`` on numpy rows (the whole call a web
#: handler makes, input checks and tensor creation included), in its default and its ONNX runtime.
PREDICTOR_RUNTIMES = ("predictor", "predictor_onnx", "predictor_auto")
Call = Callable[[torch.Tensor, torch.Tensor], object]


def torch_call(module: torch.nn.Module) -> Call:
    def call(categorical: torch.Tensor, numeric: torch.Tensor) -> object:
        with torch.inference_mode():
            return module(categorical, numeric)

    return call


def predictor_call(predictor: Predictor) -> Call:
    def call(categorical: torch.Tensor, numeric: torch.Tensor) -> object:
        return predictor.predict_encoded(categorical.numpy(), numeric.numpy())

    return call


def onnx_call(runner: OnnxRunner) -> Call:
    def call(categorical: torch.Tensor, numeric: torch.Tensor) -> object:
        return runner(categorical.numpy(), numeric.numpy())

    return call


def int8_session(model: torch.nn.Module, example: tuple[torch.Tensor, torch.Tensor], folder: Path,
                 threads: int) -> Call:
    """``model`` with int8 tables, exported in its ONNX serving form, its products quantised, opened."""
    ort = formats.require("onnxruntime", "onnx")
    _, module = serving_forms(quantize_tables(model), example[1].shape[1], "onnx")[0]
    path, _ = formats.write(module, "onnx", folder, *example)
    quantized = folder / "model.int8.onnx"
    quantize_onnx_matmuls(str(path), str(quantized))
    session = ort.InferenceSession(str(quantized), session_options(ort, threads), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def call(categorical: torch.Tensor, numeric: torch.Tensor) -> object:
        return session.run(None, {names[0]: categorical.numpy(), names[1]: numeric.numpy()})

    return call


def build_calls(model: torch.nn.Module, example: tuple[torch.Tensor, torch.Tensor], folder: Path,
                threads: int, runtimes: list[str]) -> dict[str, Call]:
    calls: dict[str, Call] = {}
    if "eager" in runtimes:
        calls["eager"] = torch_call(model)
    fast = optimize_for_inference(model, fuse=True)  # as serving builds it
    if "inference" in runtimes:
        calls["inference"] = torch_call(fast)
    if "torchscript" in runtimes:
        calls["torchscript"] = torch_call(inference_module(model, "torchscript"))
    for name, runtime in zip(PREDICTOR_RUNTIMES, ("torchscript", "onnx", "auto")):
        if name in runtimes:
            calls[name] = predictor_call(Predictor(model, runtime=runtime))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "onnx" in runtimes:
            calls["onnx"] = onnx_call(OnnxRunner(model, threads=threads))
        if "onnx_int8" in runtimes:
            calls["onnx_int8"] = int8_session(model, example, Path(tempfile.mkdtemp(dir=folder)), threads)
    return calls


def time_cells(calls: dict[tuple[str, str], Call], batches: list, seconds: float, rounds: int) -> dict:
    """Interleaved rounds: in each, every call runs for about ``seconds / rounds`` on the batches in turn."""
    latencies: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for key, call in calls.items():  # warm-up: first-call allocations, ORT's arena, lazy kernels
        for batch in batches[:2]:
            call(batch.categorical, batch.numeric)
    per_round = seconds / rounds / max(1, len(calls))
    for _ in range(rounds):
        for key, call in calls.items():
            start_round, i = time.perf_counter(), 0
            while True:
                batch = batches[i % len(batches)]
                t0 = time.perf_counter()
                call(batch.categorical, batch.numeric)
                latencies[key].append(time.perf_counter() - t0)
                i += 1
                if time.perf_counter() - start_round >= per_round and i >= 3:
                    break
    return latencies


def summarize(samples: list[float], batch: int) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"p50_ms": 1e3 * statistics.median(ordered), "p99_ms": 1e3 * p99,
            "samples_per_s": batch / statistics.fmean(ordered), "calls": len(ordered)}


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"Serving latency, {meta['model']} at the Criteo shape (tables capped at {meta['vocab_cap']:,} rows), "
             f"{meta['machine']['cpu']}, torch {meta['torch']}.", ""]
    for threads in meta["threads"]:
        lines += [f"**{threads} thread{'s' if threads > 1 else ''}**", "",
                  "| batch | structure | " + " | ".join(meta["runtimes"]) + " |",
                  "|---:|---|" + "---:|" * len(meta["runtimes"])]
        for batch in meta["batches"]:
            cells = {(r["structure"], r["runtime"]): r for r in results if r["threads"] == threads and r["batch"] == batch}
            for structure in STRUCTURES:
                row = [f"{cells[(structure, rt)]['p50_ms']:.3g} / {cells[(structure, rt)]['p99_ms']:.3g} ms"
                       if (structure, rt) in cells else "–" for rt in meta["runtimes"]]
                lines.append(f"| {batch:,} | {structure} | " + " | ".join(row) + " |")
            best = {s: min((r for r in cells.values() if r["structure"] == s), key=lambda r: r["p50_ms"])
                    for s in STRUCTURES}
            beats = all(best["afm_emb"]["p50_ms"] < r["p50_ms"] for r in cells.values() if r["structure"] == "baseline")
            lines.append(f"| | **winner** | +AFM EMB: `{best['afm_emb']['runtime']}` "
                         f"({best['afm_emb']['samples_per_s']:,.0f} samples/s), baseline: `{best['baseline']['runtime']}` "
                         f"({best['baseline']['samples_per_s']:,.0f}); best +AFM EMB beats every baseline runtime: "
                         f"{'yes' if beats else 'no'} |" + " |" * (len(meta["runtimes"]) - 1))
        lines.append("")
    lines.append("Cells: p50 / p99 latency of one call. Command: " + meta["command"])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deepfm")
    parser.add_argument("--vocab-cap", type=int, default=100_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024, 10_000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES + PREDICTOR_RUNTIMES)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per (batch size, thread count) and cell")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the Markdown table here (and .json next to it)")
    args = parser.parse_args(argv)
    reuse_freed_memory()
    shape = paper_shape("criteo", args.vocab_cap)
    settings = VariantSettings(mlp_rank=shape.mlp_rank, emb_rank=shape.emb_rank)
    twin = build_twin(args.model, shape)
    models = {s: build_variant(args.model, shape, s, settings, twin=twin) for s in STRUCTURES}
    example_batch = make_batches(shape, 2, 1, seed=0)[0]
    example = (example_batch.categorical, example_batch.numeric)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            torch.set_num_threads(threads)
            calls = {(s, rt): call for s, model in models.items()
                     for rt, call in build_calls(model, example, Path(tmp), threads, args.runtimes).items()}
            for batch in args.batches:
                batches = make_batches(shape, batch, 4 if batch >= 1024 else 32, seed=batch)
                for (structure, runtime), samples in time_cells(calls, batches, args.seconds * len(calls),
                                                                args.rounds).items():
                    results.append({"threads": threads, "batch": batch, "structure": structure, "runtime": runtime,
                                    **summarize(samples, batch)})
                    print(json.dumps(results[-1]), flush=True)
    meta = {"model": args.model, "vocab_cap": args.vocab_cap, "threads": args.threads, "batches": args.batches,
            "runtimes": args.runtimes, "machine": machine_info(), "torch": torch.__version__,
            "command": "python benchmarks/bench_serving.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    write_report(markdown(results, meta), meta, results, args.out)


def write_report(table: str, meta: dict, results: list[dict], out: str | None) -> None:
    """Print the Markdown table; with ``out``, write it there and the figures to ``out`` with ``.json``."""
    print(table)
    if out:
        Path(out).write_text(table)
        Path(out).with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
