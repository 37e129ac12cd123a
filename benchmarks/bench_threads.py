"""How many torch intra-op threads one inference process should use: 1 vs 2 vs every core, measured.

For each model, the baseline and +AFM EMB (inference form, paper's ranks, capped tables) are timed
at each thread count and batch size. Thread counts cannot be interleaved inside one forward, so
the loop switches ``torch.set_num_threads`` between timed passes, round by round, in one process:
load from elsewhere on the machine hits every setting alike. Prints the CPU model, the core count
the process may use, samples/s per setting and the speed-up of each thread count over one thread.

    OMP_NUM_THREADS=1 python benchmarks/bench_threads.py --models deepfm nfm --batches 10000 1024

(``OMP_NUM_THREADS`` only sets the starting count; the script sets each count itself.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lightning_afm.bench.benchmark import BenchSettings
from lightning_afm.bench.report import cpu_name
from lightning_afm.bench.shapes import paper_shape
from lightning_afm.bench.throughput import make_batches
from lightning_afm.bench.variants import build_twin, build_variant
from lightning_afm.inference import optimize_for_inference
from lightning_afm.runtime import reuse_freed_memory


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask; ``os.cpu_count()`` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_counts(cores: int) -> list[int]:
    """1, 2 and every core, without repeats (``[1]`` on one core)."""
    return sorted({1, min(2, cores), cores})


def time_settings(forwards: dict[str, object], inputs: list, counts: list[int], rounds: int) -> dict[tuple, float]:
    """Median seconds per batch of each ``(name, threads)``: per round, every thread count in turn
    (rotated), every model at that count; one untimed warm-up call per setting."""
    times: dict[tuple, list[float]] = {(n, c): [] for n in forwards for c in counts}
    with torch.inference_mode():
        for c in counts:
            torch.set_num_threads(c)
            for forward in forwards.values():
                forward(inputs[0])
        for r in range(rounds):
            shift = r % len(counts)
            for c in counts[shift:] + counts[:shift]:
                torch.set_num_threads(c)
                for name, forward in forwards.items():
                    for x in inputs:
                        start = time.perf_counter()
                        forward(x)
                        times[(name, c)].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="criteo", choices=["criteo", "avazu"])
    parser.add_argument("--models", nargs="+", default=["deepfm", "nfm", "autoint", "dcn"])
    parser.add_argument("--batches", nargs="+", type=int, default=[10_000, 1024], help="batch sizes")
    parser.add_argument("--vocab-cap", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=2, help="batches per setting and round")
    args = parser.parse_args()
    reuse_freed_memory()
    cores = usable_cores()
    counts = thread_counts(cores)
    shape = paper_shape(args.dataset, args.vocab_cap)
    settings = BenchSettings(datasets=[args.dataset], vocab_cap=args.vocab_cap).variant_settings(shape)
    print(f"CPU: {cpu_name()}; {cores} usable core(s) ({os.cpu_count()} logical CPUs); torch {torch.__version__}; "
          f"{args.dataset} shape, tables capped at {args.vocab_cap:,} rows; load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the start")
    heads = " | ".join(f"{c} thr samples/s" for c in counts) + " | " + " | ".join(f"{c} thr / 1" for c in counts[1:])
    print(f"| model | variant | batch | {heads} |")
    print("|" + "---|" * (3 + 2 * len(counts) - 1))
    for name in args.models:
        twin = build_twin(name, shape)
        baseline = build_variant(name, shape, "baseline", settings, twin)
        models = {"baseline": baseline,
                  "afm_emb": build_variant(name, shape, "afm_emb", settings, twin, dict(baseline.named_parameters()))}
        forwards = {v: (lambda b, m=optimize_for_inference(m): m(b.categorical, b.numeric)) for v, m in models.items()}
        for batch in args.batches:
            inputs = make_batches(shape, batch, args.per_round, seed=0)
            median = time_settings(forwards, inputs, counts, args.rounds)
            for variant in models:
                sps = [batch / median[(variant, c)] for c in counts]
                cells = [f"{s:,.0f}" for s in sps] + [f"{s / sps[0]:.2f}x" for s in sps[1:]]
                print(f"| {name} | {variant} | {batch:,} | " + " | ".join(cells) + " |", flush=True)
        del models, forwards, baseline, twin


if __name__ == "__main__":
    main()
