"""Whether ONNX Runtime's spinning workers slow the other runtimes of the same process.

After a run, an ONNX Runtime session's intra-op workers spin for a while, waiting for the next
one. The bench (and a server that routes requests to several runtimes) runs several sessions and
PyTorch in turn in one process; on few cores, a finished session's spinning worker then takes a
core from whichever runs next. This builds one model's baseline, +AFM MLP and +AFM EMB at the
paper's shape (tables capped), exports each to ONNX, and times the three sessions and the
baseline in PyTorch: each alone (back to back), then interleaved round by round, once with
spinning workers (ONNX Runtime's default) and once without (``session.intra_op.allow_spinning``
0, what ``lightning-afm-bench`` uses). Prints the median milliseconds of each, with the CPU.

    .venv/bin/python benchmarks/bench_onnx_spinning.py --model dcn --dataset criteo --threads 2
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from lightning_afm.bench.benchmark import BenchSettings
from lightning_afm.bench.report import cpu_name
from lightning_afm.bench.shapes import paper_shape
from lightning_afm.bench.throughput import make_batches
from lightning_afm.bench.variants import build_twin, build_variant
from lightning_afm.export import formats
from lightning_afm.inference import optimize_for_inference


def timings(runs: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """Median seconds of each run alone (back to back) and interleaved (order rotated each round)."""
    alone: dict[str, float] = {}
    for name, run in runs.items():
        run()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        alone[name] = statistics.median(times)
    order = list(runs)
    mixed: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:
            start = time.perf_counter()
            runs[name]()
            mixed[name].append(time.perf_counter() - start)
    return {name: (alone[name], statistics.median(mixed[name])) for name in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dcn")
    parser.add_argument("--dataset", default="criteo", choices=["criteo", "avazu"])
    parser.add_argument("--vocab-cap", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.getLogger("torch").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    shape = paper_shape(args.dataset, args.vocab_cap)
    settings = BenchSettings(datasets=[args.dataset], vocab_cap=args.vocab_cap).variant_settings(shape)
    batch = make_batches(shape, args.batch, 1, seed=0)[0]
    twin = build_twin(args.model, shape)
    baseline = build_variant(args.model, shape, "baseline", settings, twin)
    forms = {"baseline": optimize_for_inference(baseline.eval())}
    for variant in ("afm_mlp", "afm_emb"):
        built = build_variant(args.model, shape, variant, settings, twin, dict(baseline.named_parameters()))
        forms[variant] = optimize_for_inference(built.eval())
    arrays = (batch.categorical.numpy(), batch.numeric.numpy())
    print(f"{cpu_name()}, {args.threads} thread(s), {args.model} at the {args.dataset} shape, batch {args.batch:,}; "
          "median ms alone / interleaved with the others")
    with tempfile.TemporaryDirectory(prefix="afm-spin-") as tmp, torch.inference_mode():
        for name in forms:
            (Path(tmp) / name).mkdir()
        paths = {name: formats.write(form, "onnx", Path(tmp) / name, batch.categorical, batch.numeric)[0]
                 for name, form in forms.items()}
        for spinning in (True, False):
            runs = {f"onnx {name}": (lambda runner: lambda: runner(*arrays))(
                formats.load_runner("onnx", path, threads=args.threads, spinning=spinning))
                for name, path in paths.items()}
            runs["torch baseline"] = lambda: forms["baseline"](batch.categorical, batch.numeric)
            measured = timings(runs, args.rounds)
            print(("spinning workers (ONNX Runtime's default)" if spinning else "no spinning") + ": " + ", ".join(
                f"{name} {alone * 1e3:.1f} / {mixed * 1e3:.1f}" for name, (alone, mixed) in measured.items()))


if __name__ == "__main__":
    main()
