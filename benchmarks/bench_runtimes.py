"""Which runtime runs the baseline and +AFM EMB fastest: every runtime of the bench, side by side in one process.

For each model, the baseline and +AFM EMB are built at the paper's shape (capped tables), put in
their inference form, prepared on every runtime of :mod:`lightning_afm.bench.runtimes` (compiled
and exported before any timing) and timed interleaved round by round, so machine load hits all
runtimes alike. Prints samples/s per runtime, the ratio to eager, and the seconds each runtime took
to prepare each model (export, or ``torch.compile``'s compilation, plus the first call): what
``lightning-afm-bench runtime=best`` spends per variant before timing.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_runtimes.py --models deepfm nfm --threads 1
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch

from lightning_afm.bench.benchmark import BenchSettings
from lightning_afm.bench.report import cpu_name
from lightning_afm.bench.runtimes import RUNTIMES, RuntimeUnavailable, prepare
from lightning_afm.bench.shapes import paper_shape
from lightning_afm.bench.throughput import make_batches, summarize, time_interleaved
from lightning_afm.bench.variants import build_twin, build_variant
from lightning_afm.inference import optimize_for_inference
from lightning_afm.runtime import reuse_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="criteo", choices=["criteo", "avazu"])
    parser.add_argument("--models", nargs="+", default=["dcn", "deepfm", "nfm", "autoint", "fibinet", "dcnv2", "gdcn"])
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))
    parser.add_argument("--vocab-cap", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=2, help="batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.getLogger("torch").setLevel(logging.ERROR)  # the exporters' and compiler's chatter
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as the bench and a warmed-up server
    shape = paper_shape(args.dataset, args.vocab_cap)
    # the bench's own settings for the structures (the paper's ranks for the dataset)
    settings = BenchSettings(datasets=[args.dataset], vocab_cap=args.vocab_cap).variant_settings(shape)
    batches = make_batches(shape, args.batch, args.batches, seed=0)
    print(f"{cpu_name()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, {args.dataset} shape, "
          f"tables capped at {args.vocab_cap:,} rows, batch {args.batch:,}, {args.rounds} rounds x {args.batches} "
          "batches, runtimes interleaved in one process")
    header = "| model | variant | " + " | ".join(f"{r} samples/s" for r in args.runtimes) + " | best / eager |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    for name in args.models:
        twin = build_twin(name, shape)
        baseline = build_variant(name, shape, "baseline", settings, twin)
        built = {"baseline": baseline,
                 "afm_emb": build_variant(name, shape, "afm_emb", settings, twin, dict(baseline.named_parameters()))}
        runners, refused, prepare_s = {}, {}, {}
        for variant, model in built.items():
            fast = optimize_for_inference(model, fuse=True)  # as the bench times it
            for runtime in args.runtimes:
                started = time.perf_counter()
                try:
                    runners[(variant, runtime)] = prepare(fast, runtime, batches, export_fallback=model).timed
                except RuntimeUnavailable as err:
                    refused[(variant, runtime)] = str(err)
                prepare_s[(variant, runtime)] = time.perf_counter() - started
        times = time_interleaved({f"{v}/{r}": t for (v, r), t in runners.items()}, args.rounds, warmup=1)
        for variant in built:
            sps = {r: summarize(times[f"{variant}/{r}"], args.batch).samples_per_s
                   for r in args.runtimes if (variant, r) in runners}
            best = max(sps, key=sps.get) if sps else None
            cells = [f"{sps[r]:,.0f}" if r in sps else "refused" for r in args.runtimes]
            ratio = f"{best} {sps[best] / sps['eager']:.2f}x" if best and "eager" in sps else "n/a"
            print(f"| {name} | {variant} | " + " | ".join(cells) + f" | {ratio} |", flush=True)
        for key, reason in refused.items():
            print(f"  {name}/{key[0]}/{key[1]}: {reason}")
        print(f"  {name} prepare s: " + ", ".join(f"{v}/{r} {s:.1f}" for (v, r), s in prepare_s.items()), flush=True)


if __name__ == "__main__":
    main()
