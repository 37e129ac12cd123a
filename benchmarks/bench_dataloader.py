"""Batches per second of the DataModule's loaders alone, on Criteo-shaped data.

The training loop's steps per second are compared against the train figure: the
loader should never be the bottleneck (issue 2 asks for at least 10x the
training steps/s). The data is a generated Criteo-format file (26 categorical
fields of Criteo's cardinalities, 13 integer fields), encoded once into the
cache and then memory-mapped, exactly as ``data=criteo`` runs.

    python benchmarks/bench_dataloader.py                       # 1M rows, batch 1000
    python benchmarks/bench_dataloader.py --rows 2000000 --batch-size 1000 --epochs 2
    python benchmarks/bench_dataloader.py --file /data/criteo/train.txt
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _measure(loader, epochs: int = 1) -> tuple[int, int, float]:
    """Batches, rows and seconds of ``epochs`` full passes (every batch materialised as tensors)."""
    batches = rows = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            batches += 1
            rows += int(batch["label"].shape[0])
    return batches, rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, help="a Criteo train.txt-format file (default: generate one)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--eval-batch-size", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lightning_afm_bench")
    args = parser.parse_args()

    import torch

    from lightning_afm.data import CriteoDataModule
    from lightning_afm.data.synthetic import write_criteo_format

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.file
    if path is None:
        path = args.workdir / f"criteo_like_{args.rows}.txt"
        if not path.exists():
            print(f"writing {args.rows:,} Criteo-format rows to {path} ...", flush=True)
            write_criteo_format(path.with_suffix(".tmp"), args.rows, seed=0, progress=True).rename(path)
    dm = CriteoDataModule(path, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, cache_dir=args.workdir / "cache", progress=True)
    dm.prepare_data()
    dm.setup()
    print(f"data: {path} -> {dm.preprocess_result.path} ({'reused' if dm.preprocess_result.reused else 'built'})")
    print(f"rows: train {dm.num_rows('train'):,}, test {dm.num_rows('test'):,}; fields: {dm.schema.num_categorical} categorical, "
          f"{dm.schema.num_numeric} numeric; CPUs: {os.cpu_count()}; load average: {os.getloadavg()[0]:.2f}")  # fmt: skip

    _measure(dm.train_dataloader())  # one warm pass: the memory maps come into the page cache
    figures = [
        (f"train (shuffled, batch {args.batch_size})", *_measure(dm.train_dataloader(), args.epochs)),
        (f"statistics (in order, batch {args.batch_size})", *_measure(dm.statistics_dataloader(args.batch_size), args.epochs)),
        (f"test (in order, batch {args.eval_batch_size})", *_measure(dm.test_dataloader(), args.epochs)),
    ]
    print(f"\n{'loader':<36}{'batches':>9}{'seconds':>9}{'batches/s':>11}{'rows/s':>13}")
    for name, batches, rows, seconds in figures:
        print(f"{name:<36}{batches:>9,}{seconds:>9.2f}{batches / seconds:>11,.0f}{rows / seconds:>13,.0f}")


if __name__ == "__main__":
    main()
