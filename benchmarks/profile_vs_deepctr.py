"""Where our baseline's inference form and DeepCTR-Torch's twin spend a forward: torch.profiler, side by side.

Both are built as the bench builds them (DeepCTR-Torch reads our tables' storage), at the paper's
shape with capped tables, and each is profiled on the same batches (after warm-up) under
``torch.inference_mode`` on one thread. Prints each one's median batch time over interleaved
timing rounds and the aten operators that take the most self CPU time, so that a difference in
work (an extra copy, a different kernel) shows as a row present in one table only.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/profile_vs_deepctr.py --models autoint nfm --dataset criteo
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from lightning_afm.bench.benchmark import BenchSettings
from lightning_afm.bench.deepctr import build_deepctr_model, deepctr_input
from lightning_afm.bench.report import cpu_name
from lightning_afm.bench.shapes import paper_shape
from lightning_afm.bench.throughput import Timed, make_batches, time_interleaved
from lightning_afm.bench.variants import build_twin, build_variant
from lightning_afm.inference import optimize_for_inference
from lightning_afm.runtime import reuse_freed_memory


def op_table(runner: Timed, calls: int, top: int) -> list[tuple[str, float, int]]:
    """``(aten op, self CPU ms per forward, calls per forward)`` of the ``top`` costliest ops."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(calls):
            runner.forward(runner.inputs[i % len(runner.inputs)])
    rows = [(e.key, e.self_cpu_time_total / 1000 / calls, e.count // calls) for e in prof.key_averages()
            if e.key.startswith("aten::")]
    return sorted(rows, key=lambda r: -r[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="criteo", choices=["criteo", "avazu"])
    parser.add_argument("--models", nargs="+", default=["autoint", "nfm"])
    parser.add_argument("--vocab-cap", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--variant", default="baseline", help="our structure to profile (afm_emb: where its time goes)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reuse_freed_memory()
    shape = paper_shape(args.dataset, args.vocab_cap)
    settings = BenchSettings(datasets=[args.dataset], vocab_cap=args.vocab_cap).variant_settings(shape)
    batches = make_batches(shape, args.batch, 2, seed=0)
    print(f"{cpu_name()}, 1 torch thread, torch {torch.__version__}, {args.dataset} shape, tables capped at "
          f"{args.vocab_cap:,} rows, batch {args.batch:,}")
    for name in args.models:
        twin = build_twin(name, shape)
        ours = build_variant(name, shape, "baseline", settings, twin)
        fast = optimize_for_inference(ours if args.variant == "baseline" else
                                      build_variant(name, shape, args.variant, settings, twin), fuse=True)
        theirs = build_deepctr_model(name, shape, tables_from=ours, seed=0).eval()
        runners = {
            "ours": Timed(lambda b, m=fast: m(b.categorical, b.numeric), batches),
            "deepctr": Timed(theirs, [deepctr_input(b.categorical, b.numeric) for b in batches]),
        }
        times = time_interleaved(runners, args.rounds, warmup=1)
        medians = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(f"\n## {name}: ours {medians['ours']:.1f} ms, DeepCTR-Torch {medians['deepctr']:.1f} ms a batch "
              f"(ours / DeepCTR-Torch throughput {medians['deepctr'] / medians['ours']:.2f}x)")
        for who, runner in runners.items():
            print(f"\n{who}: aten op | self ms per forward | calls per forward")
            for op, ms, count in op_table(runner, 3, args.top):
                print(f"  {op:<36} {ms:8.2f} {count:6d}")


if __name__ == "__main__":
    main()
