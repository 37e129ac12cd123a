"""Training speed of the regularisation choices side by side: Adam weight decay 0 or 1e-3, and the
L2 term over the looked-up rows (``model.l2=rows``) or over every table entry (``model.l2=full``,
equation 13 as the paper writes it).

One process, one DeepFM per choice (the paper's Criteo shape: embedding 16, MLP 3 x 400,
dropout 0.5, r = 1e-5) built on the schema of a real Criteo-format file, the same training
batches for all; the choices run interleaved in blocks of ``--block`` steps, so that other load
on the machine hits them alike. Each step is what ``CTRModel.training_step`` computes (forward,
BCE, the L2 term, backward) and the Adam step of ``configure_optimizers``. Figures are samples/s
from the median step time. Pin it to one core for stable figures::

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/bench_regularization.py \\
        --file ../shared/data/criteo_sample_10k.txt
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: (weight decay, L2 extent) pairs timed, the project's former default first.
CHOICES = [(0.0, "rows"), (1e-3, "rows"), (0.0, "full"), (1e-3, "full")]


def training_batches(path: Path, batch_size: int, steps: int, cache_dir: Path):
    """The schema of ``path`` (read as ``data=criteo``) and up to ``steps`` training batches."""
    from lightning_afm.data import CriteoDataModule

    dm = CriteoDataModule(path, batch_size=batch_size, val_fraction=0.0, cache_dir=cache_dir, progress=False)
    dm.prepare_data()
    dm.setup("fit")
    return dm.schema, list(itertools.islice(iter(dm.train_dataloader()), steps))


def step_fn(schema, weight_decay: float, l2: str, seed: int):
    """One training step of a fresh DeepFM with these settings, as ``training_step`` computes it."""
    from lightning_afm.models import DeepFM

    torch.manual_seed(seed)
    model = DeepFM(schema, embedding_dim=16, mlp_hidden=[400, 400, 400], dropout=0.5, lr=1e-4,
                   weight_decay=weight_decay, l2_reg=1e-5, l2=l2).train()
    opt = model.configure_optimizers()

    def step(batch: dict) -> float:
        start = time.perf_counter()
        logits, codes, lr_weights = model.forward_parts(batch["categorical"], batch.get("numeric"))
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"]) + model.l2_penalty(codes, lr_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    return step


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", type=Path, required=True, help="a Criteo-format file (read as data=criteo)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5, help="alternations of the interleaved choices")
    p.add_argument("--block", type=int, default=10, help="steps per choice per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per choice first")
    p.add_argument("--cache-dir", type=Path, default=None, help="the data cache (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.block < 1 or args.warmup < 0:
        p.error("--rounds and --block must be >= 1 and --warmup >= 0")
    from lightning_afm.runtime import reuse_freed_memory

    reuse_freed_memory()  # as the app does before every fit
    with tempfile.TemporaryDirectory() as tmp:
        schema, batches = training_batches(args.file, args.batch_size, args.warmup + args.rounds * args.block,
                                           args.cache_dir or Path(tmp))
    if len(batches) < args.warmup + args.block:
        p.error(f"{args.file} gives {len(batches)} training batches of {args.batch_size}; "
                f"--warmup + --block needs {args.warmup + args.block}: use a smaller --batch-size or --block")
    steps = {choice: step_fn(schema, *choice, seed=args.seed) for choice in CHOICES}
    times: dict[tuple[float, str], list[float]] = {choice: [] for choice in CHOICES}
    for step in steps.values():
        for b in batches[: args.warmup]:
            step(b)
    timed = batches[args.warmup:]
    for r in range(args.rounds):
        block = [timed[(r * args.block + j) % len(timed)] for j in range(args.block)]
        for choice, step in steps.items():
            times[choice].extend(step(b) for b in block)
    rows = sum(schema.vocab_sizes)
    print(f"DeepFM, emb 16, MLP 3x400, batch {args.batch_size}, {len(schema.vocab_sizes)} tables with {rows:,} rows "
          f"({args.file.name}), r 1e-5; {args.rounds} rounds x {args.block} steps per choice, "
          f"{torch.get_num_threads()} threads; samples/s from the median step time")
    base = None
    result = {}
    for (wd, l2), t in times.items():
        rate = args.batch_size / statistics.median(t)
        base = base or rate
        result[f"weight_decay={wd:g} l2={l2}"] = rate
        print(f"  weight_decay={wd:<6g} l2={l2:<5} {rate:9,.0f} samples/s  ({rate / base:.2f}x the first)")
    return result


if __name__ == "__main__":
    main()
