"""DCN's inference form with its cross network layer by layer against the one-product form.

Builds DCN's baseline, +AFM MLP and +AFM EMB at the paper's shape (tables capped), each in its
inference form (``optimize_for_inference(fuse=True)``, as the bench times it) twice: with the
one-product cross part (:mod:`lightning_afm.inference.cross_v1`, the default) and with the
layer-by-layer :class:`~lightning_afm.inference.heads.ParallelCrossHead` (the form before it),
sharing every weight. Times all six side by side in one process, interleaved round by round
(:func:`lightning_afm.bench.throughput.time_interleaved`), and prints the samples/s and each
+AFM gain over the baseline of the same head.

    .venv/bin/python benchmarks/bench_dcn_cross.py                      # Criteo, 1 thread
    .venv/bin/python benchmarks/bench_dcn_cross.py --dataset avazu --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse

import torch

from lightning_afm.bench.benchmark import BenchSettings
from lightning_afm.bench.report import cpu_name
from lightning_afm.bench.shapes import paper_shape
from lightning_afm.bench.throughput import Timed, make_batches, summarize, time_interleaved
from lightning_afm.bench.variants import build_twin, build_variant
from lightning_afm.inference import Tensors, optimize_for_inference
from lightning_afm.inference.heads import ParallelCrossHead
from lightning_afm.runtime import reuse_freed_memory

VARIANTS = ("baseline", "afm_mlp", "afm_emb")


def layer_by_layer(model: torch.nn.Module) -> torch.nn.Module:
    """``model``'s inference form with the layer-by-layer cross head (reads the built embeddings)."""
    fast = optimize_for_inference(model, fuse=True)
    fast.deep = ParallelCrossHead(model, Tensors())
    fast.build_embeddings = True
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="criteo", choices=["criteo", "avazu"])
    parser.add_argument("--vocab-cap", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()
    shape = paper_shape(args.dataset, args.vocab_cap)
    vs = BenchSettings().variant_settings(shape)
    twin = build_twin("dcn", shape)
    baseline = build_variant("dcn", shape, "baseline", vs, twin)
    shared = dict(baseline.named_parameters())
    models = {v: baseline if v == "baseline" else build_variant("dcn", shape, v, vs, twin, shared) for v in VARIANTS}
    batches = make_batches(shape, args.batch, 2, seed=0)
    runners: dict[str, Timed] = {}
    for variant, model in models.items():
        for head, fast in (("one product", optimize_for_inference(model, fuse=True)),
                           ("layer by layer", layer_by_layer(model))):
            runners[f"{variant}|{head}"] = Timed(lambda b, f=fast: f(b.categorical, b.numeric), batches)
    with torch.inference_mode():  # both forms give the same logits before anything is timed
        for variant in VARIANTS:
            a = runners[f"{variant}|one product"].forward(batches[0])
            b = runners[f"{variant}|layer by layer"].forward(batches[0])
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max().clamp(min=1.0)))
    times = time_interleaved(runners, args.rounds)
    sps = {name: summarize(t, args.batch).samples_per_s for name, t in times.items()}
    print(f"{cpu_name()}: DCN, {args.dataset} shape (tables capped at {args.vocab_cap:,}), batch {args.batch:,}, "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds x 2 batches, median; torch {torch.__version__}\n")
    print("| cross head | baseline samples/s | +AFM MLP | +AFM EMB |")
    print("|---|---:|---:|---:|")
    for head in ("layer by layer", "one product"):
        base = sps[f"baseline|{head}"]
        gains = [100.0 * (sps[f"{v}|{head}"] / base - 1.0) for v in VARIANTS[1:]]
        print(f"| {head} | {base:,.0f} | " + " | ".join(f"{g:+.1f} %" for g in gains) + " |")
    print("\none product / layer by layer, samples/s: "
          + ", ".join(f"{v} {sps[f'{v}|one product'] / sps[f'{v}|layer by layer']:.2f}x" for v in VARIANTS))


if __name__ == "__main__":
    main()
