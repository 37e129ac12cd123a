"""Layouts of the inference layer's table gather, timed side by side: what one batch's lookup of
every field's codes and LR weight costs in each (the choice behind ``inference.lookups.FusedLookup``).

At the Criteo shape (26 fields, tables capped at 100,000 rows, rank-2 codes, batch 10,000, Zipf
ids), in one process, interleaved round by round (median ms of the rounds, after a warm-up):

* ``per-field``: today's unfused form, ``2F`` gathers (codes and LR) into strided outputs
  (``GatheredLookup``, as ``optimize_for_inference(model)`` without ``fuse``);
* ``fused k+1``: one ``index_select`` on a ``[F V, k+1]`` table, ids batch-major (sample after sample);
* ``fused padded``: the same with the row padded to a multiple of 4 floats (16 bytes), gathered
  as one complex128 word per row (``FusedLookup``'s default);
* ``fused padded, as rows``: the padded table gathered as float rows (no word view);
* ``fused field-major``: ids field after field, then the ``[F, B, W]`` rows transposed into the
  ``[B, F, W]`` layout the heads read (one copy);
* ``F.embedding`` and ``advanced indexing`` (``table[ids]``) on the padded table;
* ``embedding_bag sum``: ``F.embedding_bag`` (mode ``sum``, one bag per sample) for the LR logit
  only, next to the same sum read from the gathered rows.

    .venv/bin/python benchmarks/bench_gather_layout.py
    .venv/bin/python benchmarks/bench_gather_layout.py --rank 8 --fields 22 --rounds 15 --threads 2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from bench_cross_alignment import interleaved  # same folder: the timing loop, written once

from lightning_afm.bench.report import cpu_name
from lightning_afm.bench.throughput import zipf_ids
from lightning_afm.inference.lookups import FusedLookup, GatheredLookup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=26)
    parser.add_argument("--rows", type=int, default=100_000, help="rows per field's table")
    parser.add_argument("--rank", type=int, default=2, help="code width k (16 for a baseline's d-wide rows)")
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    k, fields = args.rank, args.fields
    codes = [torch.randn(args.rows, k) for _ in range(fields)]
    lr = [torch.randn(args.rows, 1) for _ in range(fields)]
    cat = torch.from_numpy(np.stack([zipf_ids(args.rows, args.batch, 1.0, rng) for _ in range(fields)], 1)).long()

    per_code, per_lr = GatheredLookup(codes), GatheredLookup(lr)
    exact = FusedLookup(codes, lr, row_multiple=1)
    padded = FusedLookup(codes, lr, row_multiple=4)
    table, offsets = padded.table, padded.offsets
    flat = (cat + offsets).reshape(-1)
    bags = torch.arange(0, flat.numel(), fields)
    lr_column = table[:, k].contiguous()

    def per_field():
        ids = cat.t().contiguous()
        return per_code(ids), per_lr(ids).flatten(1).sum(1)

    def field_major():
        ids = (cat.t() + offsets.unsqueeze(1)).reshape(-1)
        return torch.index_select(table, 0, ids).view(fields, args.batch, -1).transpose(0, 1).contiguous()

    fns = {
        "per-field (2F gathers)": per_field,
        f"fused k+1 ({k + 1} floats)": lambda: exact(cat),
        f"fused padded ({table.shape[1]} floats)": lambda: padded(cat),
        "fused padded, as rows": lambda: torch.index_select(table, 0, (cat + offsets).reshape(-1)),
        "fused field-major + transpose": field_major,
        "F.embedding (padded)": lambda: F.embedding((cat + offsets).reshape(-1), table),
        "advanced indexing (padded)": lambda: table[(cat + offsets).reshape(-1)],
        "embedding_bag sum (LR only)": lambda: F.embedding_bag(flat, lr_column.unsqueeze(1), bags, mode="sum"),
        "index_select + sum (LR only)": lambda: torch.index_select(lr_column, 0, flat).view(args.batch, fields).sum(1),
    }
    ms = interleaved(fns, args.rounds)
    print(f"CPU: {cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; "
          f"{fields} fields x {args.rows:,} rows, k={k}, batch {args.batch:,}, median of {args.rounds} rounds")
    base = ms["per-field (2F gathers)"]
    for name, t in ms.items():
        print(f"{name:34s} {t:8.2f} ms   {base / t:5.2f}x per-field")


if __name__ == "__main__":
    main()
