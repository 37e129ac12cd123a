"""Measure each run's CPU latency at batch 10,000 side by side; write ``latency.json`` into its directory.

The pareto table (:mod:`lightning_afm.report.tables.pareto`) plots test AUC against this. Every
run directory under the roots that holds a ``last.ckpt`` is loaded as serving loads it
(:func:`lightning_afm.serve.runtime.load_model`, then its inference form), fed the same Zipf
batches of ``--batch`` rows drawn from its own schema, and timed in interleaved rounds in one
process (:func:`lightning_afm.bench.throughput.time_interleaved`), so that load elsewhere on the
machine hits all models alike. Writes ``{"batch", "median_ms", "iqr_pct", "batches", "threads",
"runtime"}``.

::

    python -m lightning_afm.report.pareto_latency multirun/recipes/pareto/small --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lightning_afm.report.tables.pareto import LATENCY_BATCH, LATENCY_FILE

__all__ = ["measure", "main"]


def _runner(checkpoint: Path, batch: int, count: int, runtime: str):
    """The inference module of ``checkpoint`` and ``count`` batches of ``batch`` rows for it."""
    from lightning_afm.app.resume import load_checkpoint
    from lightning_afm.bench.shapes import PaperShape
    from lightning_afm.bench.throughput import Timed, make_batches
    from lightning_afm.serve.runtime import inference_module, load_model

    model = load_model(load_checkpoint(checkpoint))
    schema = model.schema
    shape = PaperShape(dataset="run", vocab_sizes=list(schema.vocab_sizes),
                       field_names=list(schema.categorical_names), num_numeric=schema.num_numeric,
                       embedding_dim=model.embedding_dim, mlp_hidden=[], mlp_rank=0, emb_rank=0)
    batches = make_batches(shape, batch, count, seed=0)
    fast = inference_module(model, runtime)
    return Timed(lambda b: fast(b.categorical, b.numeric), batches)


def measure(run_dirs: Sequence[Path], batch: int = LATENCY_BATCH, rounds: int = 5, count: int = 2,
            runtime: str = "eager") -> dict[Path, dict]:
    """Time every run's ``last.ckpt`` interleaved; write and return each one's ``latency.json`` record."""
    from lightning_afm.bench.throughput import summarize, time_interleaved

    if not run_dirs:
        raise ValueError("no run directory with a last.ckpt: run the sweep with save_checkpoint=true")
    runners = {str(d): _runner(d / "last.ckpt", batch, count, runtime) for d in run_dirs}
    times = time_interleaved(runners, rounds=rounds, warmup=1)
    out = {}
    for d in run_dirs:
        summary = summarize(times[str(d)], batch)
        record = {"batch": batch, "median_ms": 1e3 * summary.median_batch_s, "iqr_pct": summary.iqr_pct,
                  "batches": summary.timed_batches, "threads": torch.get_num_threads(), "runtime": runtime,
                  "models_timed_together": len(run_dirs)}
        (d / LATENCY_FILE).write_text(json.dumps(record, indent=1) + "\n")
        out[d] = record
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_afm.report.pareto_latency",
                                     description="CPU latency of every run's last.ckpt, timed side by side.")
    parser.add_argument("roots", nargs="+", help="directories searched for run folders holding last.ckpt")
    parser.add_argument("--batch", type=int, default=LATENCY_BATCH, help="rows per batch (the table reads 10,000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each times every model)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier figures)")
    parser.add_argument("--runtime", default="eager", choices=("eager", "torchscript"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # run folders only (summary.json beside last.ckpt), not Lightning's checkpoints/ subfolder
    dirs = sorted({p.parent for root in args.roots for p in Path(root).rglob("last.ckpt")
                   if (p.parent / "summary.json").is_file()})
    try:
        records = measure(dirs, args.batch, args.rounds, runtime=args.runtime)
    except ValueError as err:
        print(f"pareto_latency: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for d, rec in records.items():
        print(f"{rec['median_ms']:9.1f} ms  (iqr {rec['iqr_pct']:.0f} %)  {d}")


if __name__ == "__main__":
    main()
