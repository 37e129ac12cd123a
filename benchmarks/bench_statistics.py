"""Cost of the AFM statistics pass against a plain no-grad forward pass over the same batches.

DeepFM at the paper's Criteo shape (26 fields with the Criteo cardinalities capped at
``--vocab-cap`` rows, 13 numeric fields, embedding 16, MLP 3 x 400), random batches of
``--batch`` rows prebuilt in memory. The plain pass and the statistics passes run interleaved,
round after round, so machine noise hits them alike; figures are medians over the rounds.
Also prints the accumulators' memory, ``O(sum m^2)``.

    .venv/bin/python benchmarks/bench_statistics.py
    .venv/bin/python benchmarks/bench_statistics.py --batch 10000 --batches 8 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_afm.compress import DEFAULT_EMBEDDING_TARGETS, DEFAULT_MLP_TARGETS, collect_statistics, resolve_targets
from lightning_afm.data.schema import Schema
from lightning_afm.models import DeepFM
from lightning_afm.models.allocator import reuse_freed_memory

CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
          27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=10000)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vocab-cap", type=int, default=100_000)
    args = parser.parse_args()

    # As in a fit (CTRModel.on_fit_start): without it glibc unmaps and re-faults the large
    # activation buffers at every batch, and the timings depend on which pass ran before.
    reuse_freed_memory()
    torch.manual_seed(0)
    vocab = [min(v, args.vocab_cap) for v in CRITEO]
    model = DeepFM(schema=Schema.from_vocab_sizes(vocab, numeric=13).to_dict()).eval()
    batches = [
        {"categorical": torch.stack([torch.randint(0, v, (args.batch,)) for v in vocab], 1),
         "numeric": torch.rand(args.batch, 13)}
        for _ in range(args.batches)
    ]

    def forward(batch):
        return model(batch["categorical"], batch["numeric"])

    @torch.no_grad()
    def plain() -> None:
        for batch in batches:
            forward(batch)

    targets = {
        "mlp (mlp.1.linear, mlp.2.linear)": resolve_targets(model, DEFAULT_MLP_TARGETS, "linear"),
        "embeddings (26 tables)": resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding"),
    }
    times: dict[str, list[float]] = {"plain": [], **{k: [] for k in targets}}
    plain()  # warm-up
    for _ in range(args.rounds):
        start = time.perf_counter()
        plain()
        times["plain"].append(time.perf_counter() - start)
        for label, names in targets.items():
            start = time.perf_counter()
            collect_statistics(model, names, batches, forward, progress=False)
            times[label].append(time.perf_counter() - start)

    rows = args.batch * args.batches
    base = statistics.median(times["plain"])
    print(f"DeepFM, Criteo shape (vocab cap {args.vocab_cap:,}), {args.batches} batches of {args.batch:,} rows, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    print(f"| pass | rows/s | time / plain forward | accumulator memory |")
    print(f"|---|---|---|---|")
    print(f"| plain no-grad forward | {rows / base:,.0f} | 1.00 | - |")
    for label, names in targets.items():
        t = statistics.median(times[label])
        widths = [model.get_submodule(n).weight.shape[0 if "mlp" in n else 1] for n in names]
        memory = sum(8 * (m * m + m) for m in widths)
        print(f"| statistics: {label} | {rows / t:,.0f} | {t / base:.2f} | {memory / 2**20:.2f} MiB |")


if __name__ == "__main__":
    main()
