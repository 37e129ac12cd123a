"""The cross networks of DCNv2 and GDCN with and without the padding to a 16-aligned width.

For each width (Criteo's 429 = 26 x 16 + 13, Avazu's 1100 = 22 x 50), times side by side, in
one process and interleaved round by round (median of the rounds):

* one ``x @ W.T + b`` at the width and at the aligned width (``aligned_width``);
* ``CrossNetworkV2`` and ``GatedCrossNetwork`` (2 layers) in their inference form, aligned
  (:func:`lightning_afm.inference.cross.build_cross`, sharing the weights), and the networks'
  own plain per-layer forward.

    .venv/bin/python benchmarks/bench_cross_alignment.py
    .venv/bin/python benchmarks/bench_cross_alignment.py --widths 429 --rounds 9 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lightning_afm.runtime import reuse_freed_memory
from lightning_afm.inference import Tensors, aligned_width
from lightning_afm.inference.cross import build_cross
from lightning_afm.models.layers import CrossNetworkV2, GatedCrossNetwork


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median milliseconds of each callable, the order rotated every round; the first round is warm-up."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    items = list(fns.items())
    with torch.inference_mode():
        for r in range(rounds + 1):
            for name, fn in items[r % len(items):] + items[: r % len(items)]:
                start = time.perf_counter()
                fn()
                if r:
                    times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[429, 1100])
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()
    torch.manual_seed(0)
    print(f"batch {args.batch:,}, {args.threads} thread(s), median of {args.rounds} interleaved rounds, "
          f"torch {torch.__version__}\n")
    print("| width | x @ W.T at the width | at the aligned width | cross network | aligned path | plain path | speed-up |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for width in args.widths:
        wide = aligned_width(width)
        x, xa = torch.randn(args.batch, width), torch.randn(args.batch, wide)
        w, wa, b, ba = torch.randn(width, width), torch.randn(wide, wide), torch.randn(width), torch.randn(wide)
        gemm = interleaved({"plain": lambda: F.linear(x, w, b), "aligned": lambda: F.linear(xa, wa, ba)}, args.rounds)
        for cls in (CrossNetworkV2, GatedCrossNetwork):
            plain = cls(width).eval()
            aligned = build_cross(plain, Tensors())
            ms = interleaved({"aligned": lambda: aligned(x), "plain": lambda: plain(x)}, args.rounds)
            print(f"| {width} -> {wide} | {gemm['plain']:.1f} ms | {gemm['aligned']:.1f} ms | {cls.__name__} | "
                  f"{ms['aligned']:.1f} ms | {ms['plain']:.1f} ms | {ms['plain'] / ms['aligned']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
