"""Where one row's serving time goes: the torch profile of the compiled inference form at batch 1.

    .venv/bin/python benchmarks/profile_batch1.py                 # DeepFM at the Criteo shape, one thread
    .venv/bin/python benchmarks/profile_batch1.py --model dcn --calls 500

For the baseline and +AFM EMB (the serving benchmark's models), the module ``Predictor`` runs with
``runtime="torchscript"`` (``serve.runtime.inference_module``: the inference layer compiled by
TorchScript; the default ``runtime="auto"`` runs it above 256 rows, ONNX Runtime below) is
called on one row ``--calls`` times under ``torch.profiler``; printed per structure: aten ops a
call and the ops with the most self CPU time (calls a call, share of the time). At this size a
call costs its ops' dispatch, not arithmetic, so the op count is the figure to cut.
"""

from __future__ import annotations

import argparse

import torch

from lightning_afm.bench.shapes import paper_shape
from lightning_afm.bench.throughput import make_batches
from lightning_afm.bench.variants import VariantSettings, build_twin, build_variant
from lightning_afm.serve.runtime import inference_module


def profile(module: torch.nn.Module, categorical: torch.Tensor, numeric: torch.Tensor, calls: int) -> list:
    """``torch.profiler`` events (key averages) of ``calls`` calls, after a warm-up."""
    with torch.inference_mode():
        for _ in range(30):  # TorchScript's profiling executor specialises the graph on its first calls
            module(categorical, numeric)
        with torch.profiler.profile() as prof:
            for _ in range(calls):
                module(categorical, numeric)
    return list(prof.key_averages())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deepfm")
    parser.add_argument("--vocab-cap", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be >= 1")
    torch.set_num_threads(1)
    shape = paper_shape("criteo", args.vocab_cap)
    settings = VariantSettings(mlp_rank=shape.mlp_rank, emb_rank=shape.emb_rank)
    twin = build_twin(args.model, shape)
    row = make_batches(shape, 1, 1, seed=1)[0]
    for structure in ("baseline", "afm_emb"):
        module = inference_module(build_variant(args.model, shape, structure, settings, twin=twin))
        events = profile(module, row.categorical, row.numeric, args.calls)
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        ops = sum(e.count for e in events if e.key.startswith("aten::")) / args.calls
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]
        print(f"{structure}: {ops:.0f} aten ops a call; " + ", ".join(
            f"{e.key} {e.count / args.calls:.0f}x {100 * e.self_cpu_time_total / total:.0f} %" for e in top))


if __name__ == "__main__":
    main()
