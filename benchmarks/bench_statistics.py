"""Cost of the AFM statistics pass against a plain no-grad forward pass over the same batches.

Each model at the paper's Criteo shape (26 fields with the Criteo cardinalities capped at
``--vocab-cap`` rows, 13 numeric fields, embedding 16, MLP 3 x 400), random batches of
``--batch`` rows prebuilt in memory. The plain pass and the statistics passes (MLP layers 2
and 3; every field embedding) run interleaved, round after round, so machine noise hits them
alike; figures are medians over the rounds. Also prints the accumulators' memory,
``O(sum m^2)``, and with ``--gram`` the outer-product sum alone: torch's general product (what
the accumulator uses) against numpy's ``a.T @ a``, which calls the BLAS symmetric update
``syrk`` (half the multiply-adds). syrk is not used: with numpy's OpenBLAS it was faster on a
quiet machine but 2-4x slower than torch as soon as other processes shared the cores.

``--train-batch N`` also times, in the same rounds, a training epoch over the same rows in batches
of ``N`` (the paper's 1000): forward, BCE, the L2 term, backward and the model's own Adam
(``configure_optimizers``), on a copy of the model, so the statistics pass can be compared with
the epoch it precedes (the target: at most 0.5x).

    .venv/bin/python benchmarks/bench_statistics.py
    .venv/bin/python benchmarks/bench_statistics.py --models deepfm dcn nfm autoint fibinet dcnv2 gdcn
    .venv/bin/python benchmarks/bench_statistics.py --gram
    .venv/bin/python benchmarks/bench_statistics.py --train-batch 1000
"""

from __future__ import annotations

import argparse
import statistics
import time

import copy

import torch
import torch.nn.functional as F

from lightning_afm.compress import collect_statistics, resolve_targets
from lightning_afm.data.schema import Schema
from lightning_afm.models import DEFAULT_EMBEDDING_TARGETS, DEFAULT_MLP_TARGETS, MODELS
from lightning_afm.runtime import reuse_freed_memory

CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
          27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def _median_ms(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def gram_table(batch: int, width: int, rounds: int) -> None:
    """The outer-product sum alone, ``[batch, width]`` float32, both ways, interleaved."""
    d = torch.randn(batch, width)
    a = d.numpy()
    plain, sym = [], []
    for _ in range(rounds):
        plain.append(_median_ms(lambda: d.T @ d, 3))
        sym.append(_median_ms(lambda: a.T @ a, 3))
    p, s = statistics.median(plain), statistics.median(sym)
    print(f"Outer-product sum of [{batch:,}, {width}] float32, {torch.get_num_threads()} threads, "
          f"median of {rounds} interleaved rounds")
    print("| product | ms | speed-up |\n|---|---|---|")
    print(f"| torch d.T @ d (general matrix product, used by OutputCovariance) | {p:.1f} | 1.00 |")
    print(f"| numpy a.T @ a (OpenBLAS syrk, not used) | {s:.1f} | {p / s:.2f} |")
    print()


def training_epoch(model: torch.nn.Module, batches: list[dict], train_batch: int):
    """A function running one training epoch of a copy of ``model`` over the rows of ``batches``,
    in batches of ``train_batch`` rows (random labels: the cost does not depend on them)."""
    trained = copy.deepcopy(model).train()
    opt = trained.configure_optimizers()
    rows = [{k: v[i : i + train_batch] for k, v in b.items()} for b in batches
            for i in range(0, len(b["categorical"]), train_batch)]
    labels = [torch.randint(0, 2, (len(r["categorical"]),)).float() for r in rows]

    def epoch() -> None:
        for r, y in zip(rows, labels):
            logits, codes, lr_weights = trained.forward_parts(r["categorical"], r["numeric"])
            loss = F.binary_cross_entropy_with_logits(logits, y) + trained.l2_penalty(codes, lr_weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return epoch


def model_table(name: str, batch: int, num_batches: int, rounds: int, vocab_cap: int, train_batch: int = 0) -> None:
    torch.manual_seed(0)
    vocab = [min(v, vocab_cap) for v in CRITEO]
    model = MODELS[name](schema=Schema.from_vocab_sizes(vocab, numeric=13).to_dict()).eval()
    batches = [
        {"categorical": torch.stack([torch.randint(0, v, (batch,)) for v in vocab], 1),
         "numeric": torch.rand(batch, 13)}
        for _ in range(num_batches)
    ]

    def forward(b):
        return model(b["categorical"], b["numeric"])

    @torch.no_grad()
    def plain() -> None:
        for b in batches:
            forward(b)

    targets = {
        "MLP layers 2, 3": resolve_targets(model, DEFAULT_MLP_TARGETS, "linear"),
        "embeddings (26 tables)": resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding"),
    }
    times: dict[str, list[float]] = {"plain": [], "train": [], **{k: [] for k in targets}}
    epoch = training_epoch(model, batches, train_batch) if train_batch else None
    plain()  # warm-up
    for _ in range(rounds):
        start = time.perf_counter()
        plain()
        times["plain"].append(time.perf_counter() - start)
        if epoch is not None:
            start = time.perf_counter()
            epoch()
            times["train"].append(time.perf_counter() - start)
        for label, names in targets.items():
            start = time.perf_counter()
            collect_statistics(model, names, batches, forward, progress=False)
            times[label].append(time.perf_counter() - start)

    rows = batch * num_batches
    base = statistics.median(times["plain"])
    for label, names in targets.items():
        t = statistics.median(times[label])
        widths = [model.get_submodule(n).weight.shape[0 if "mlp" in n else 1] for n in names]
        memory = sum(8 * (m * m + m) for m in widths)
        train = f" {t / statistics.median(times['train']):.2f} |" if epoch is not None else ""
        print(f"| {name} | {rows / base:,.0f} | {label} | {rows / t:,.0f} | {t / base:.2f} | {memory / 2**20:.2f} MiB |"
              + train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["deepfm"], choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=10000)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vocab-cap", type=int, default=100_000)
    parser.add_argument("--gram", action="store_true", help="also time the outer-product sum alone")
    parser.add_argument("--train-batch", type=int, default=0,
                        help="also time a training epoch over the same rows in batches of this size (0: no)")
    args = parser.parse_args()

    # As in a fit (the app applies it before training): without it glibc unmaps and re-faults the large
    # activation buffers at every batch, and the timings depend on which pass ran before.
    reuse_freed_memory()
    if args.gram:
        gram_table(args.batch, 400, args.rounds)
    print(f"Criteo shape (vocab cap {args.vocab_cap:,}), {args.batches} batches of {args.batch:,} rows, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    train = " time / training epoch |" if args.train_batch else ""
    print("| model | plain forward rows/s | statistics of | rows/s | time / plain forward | accumulator memory |" + train)
    print("|---|---|---|---|---|---|" + ("---|" if train else ""))
    for name in args.models:
        model_table(name, args.batch, args.batches, args.rounds, args.vocab_cap, args.train_batch)


if __name__ == "__main__":
    main()
