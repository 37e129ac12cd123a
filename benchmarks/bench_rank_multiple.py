"""Which rank multiples the factored products like: the time of ``n -> r -> m`` for every ``r``.

The budget allocator rounds MLP ranks to ``Budget.multiple`` (8). This times, for each rank
``r`` of a range, the two products of a factored Linear (``addmm(b2, addmm(b1, x, V), U)``,
``x`` ``[B, n]``, as :class:`lightning_afm.compress.timing.ProductTimer` and the inference form
run them) and the fold's product (``[B, r] @ [r, m]``: the first MLP Linear reading ``r`` code
columns), at batch 10,000 on one thread by default. Ranks are timed in interleaved rounds (every
rank once per round) and each rank's median kept, so load drift on a shared machine hits all
ranks alike.

A rank ``r`` is a *local speed optimum* when it is clearly faster than the three ranks below it
(``t(r) < (1 - tol) median(t(r-3), t(r-2), t(r-1))``): the kernels pad or split ``r`` into
widths they like, so a smaller rank can cost more. The script prints the CPU, every timing, the
local optima, and for each multiple ``m`` the median of that ratio over the ranks that are odd
multiples of ``m`` (below 1: those ranks are faster than their smaller neighbours).

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/bench_rank_multiple.py
    .venv/bin/python benchmarks/bench_rank_multiple.py --shapes 400x400 --ranks 8:64 --batch 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

MULTIPLES = (1, 2, 4, 8, 16, 32)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_ranks(text: str) -> list[int]:
    """``"8:96"`` -> 8..96; ``"8:96:2"`` with a step."""
    parts = [int(p) for p in text.split(":")]
    if len(parts) not in (2, 3) or parts[0] < 1 or parts[1] < parts[0]:
        raise argparse.ArgumentTypeError(f"--ranks is first:last[:step] with 1 <= first <= last, got {text!r}")
    return list(range(parts[0], parts[1] + 1, parts[2] if len(parts) == 3 else 1))


def parse_shape(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is NxM (in x out widths), got {text!r}") from None
    return n, m


def time_ranks(make, ranks: list[int], rounds: int) -> dict[int, float]:
    """Median microseconds of ``make(r)()`` per rank, over ``rounds`` interleaved rounds."""
    runs = {r: make(r) for r in ranks}
    for run in runs.values():
        run()  # warm-up: first-call allocations
    times: dict[int, list[float]] = {r: [] for r in ranks}
    for _ in range(rounds):
        for r, run in runs.items():
            started = time.perf_counter()
            run()
            times[r].append(time.perf_counter() - started)
    return {r: 1e6 * statistics.median(t) for r, t in times.items()}


def dips(times: dict[int, float]) -> dict[int, float]:
    """``t(r) / median(t(r-3), t(r-2), t(r-1))`` for every rank with its three smaller neighbours timed."""
    return {r: t / statistics.median([times[r - 3], times[r - 2], times[r - 1]])
            for r, t in times.items() if all(r - d in times for d in (1, 2, 3))}


def multiple_dips(ratios: dict[int, float]) -> dict[int, float]:
    """Per multiple ``m``: the median dip over the ranks that are odd multiples of ``m`` (the largest
    multiple: all of its multiples)."""
    out = {}
    for m in MULTIPLES:
        picked = [d for r, d in ratios.items() if r % m == 0 and (m == MULTIPLES[-1] or r % (2 * m))]
        if picked:
            out[m] = statistics.median(picked)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[(400, 400), (2000, 2000)],
                        help="factored Linears n x m to time (default 400x400 2000x2000)")
    parser.add_argument("--fold-width", type=int, default=400, help="the first MLP Linear's out width (fold product)")
    parser.add_argument("--ranks", type=parse_ranks, default=parse_ranks("8:96"))
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tol", type=float, default=0.05, help="how much faster than its smaller neighbours "
                        "a local speed optimum is")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch:,}, "
          f"{args.rounds} rounds (median)")
    cases = {f"pair {n}->r->{m}": (lambda r, n=n, m=m: _pair(rand, args.batch, n, r, m)) for n, m in args.shapes}
    cases[f"fold [B,r]@[r,{args.fold_width}]"] = lambda r: _product(rand, args.batch, r, args.fold_width)
    with torch.inference_mode():
        for label, make in cases.items():
            times = time_ranks(make, args.ranks, args.rounds)
            ratios = dips(times)
            optima = [r for r, d in ratios.items() if d < 1 - args.tol]
            print(f"\n{label}: microseconds per rank")
            print("  " + "  ".join(f"{r}:{t:.0f}" for r, t in times.items()))
            print(f"  local speed optima (t(r) < {1 - args.tol:g} x its 3 smaller neighbours): {optima or 'none'}")
            print("  median t(r) / neighbours over odd multiples of m:  "
                  + "  ".join(f"{m}: {d:.3f}" for m, d in multiple_dips(ratios).items()))


def _pair(rand, batch: int, n: int, r: int, m: int):
    x, v, u, b1, b2 = rand(batch, n), rand(n, r), rand(r, m), rand(r), rand(m)
    return lambda: torch.addmm(b2, torch.addmm(b1, x, v), u)


def _product(rand, batch: int, r: int, m: int):
    x, w, b = rand(batch, r), rand(r, m), rand(m)
    return lambda: torch.addmm(b, x, w)


if __name__ == "__main__":
    main()
