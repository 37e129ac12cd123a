"""Training throughput of our DeepFM against DeepCTR-Torch 0.3.0's DeepFM, on the same data.

Both models have the paper's Criteo shape: 26 categorical fields (the Criteo
cardinalities, each capped at ``--vocab-cap`` rows so the run fits a small
machine), 13 numeric fields, embedding 16, MLP 3 x 400, dropout 0.5, batch 1000,
Adam lr 1e-4 and the L2 ratio 1e-5. The data is random (uniform ids, uniform
numeric values, 25% positives) and prebuilt in memory, so only training is timed.

Figures are samples/s from the MEDIAN step time, and the compared loops run
interleaved in one process (a block of steps of one, then of the other, ...),
so that other load on the machine hits both alike.

* ``pure loop``: forward + loss + backward + Adam step, nothing else. For
  DeepCTR-Torch it is the body of its ``BaseModel.fit`` loop (sum-reduced BCE,
  ``get_regularization_loss`` over the full tables, its two ``.item()`` calls)
  on the float input matrix it expects; for ours ``forward_parts`` + BCE +
  ``l2_penalty`` + the Adam of ``configure_optimizers`` (fused kernel).
* The pure loops run twice, in two processes: with glibc's default allocator,
  and with freed blocks kept in the heap
  (:func:`lightning_afm.runtime.reuse_freed_memory`, which the
  ``lightning-afm`` app applies before a fit): otherwise the dense embedding gradients,
  re-allocated at every step, page-fault in anew each time.
* ``ours, Lightning``: ``Trainer.fit`` with everything ``CTRModel.training_step``
  does (loss, L2, train AUC and log loss, logging), batches from an in-memory
  list of dicts; step time = interval between successive batch starts. It runs
  in the reused-heap process (the setting the app applies before a fit), as
  one ``fit`` whose callback runs the other loops' blocks every ``--block``
  Lightning steps (their time is subtracted from Lightning's intervals).
* ``--ablations``: ours with plain (non-fused) Adam, DeepCTR-Torch without its
  L2 term, to show where the difference comes from.

Run::

    .venv/bin/python benchmarks/bench_train.py
    .venv/bin/python benchmarks/bench_train.py --rounds 4 --vocab-cap 1000000 --ablations

DeepCTR-Torch is optional (``pip install --no-deps deepctr-torch==0.3.0 requests``);
without it only our figures are printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

CRITEO_CARDINALITIES = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]
NUM_NUMERIC = 13

try:  # run from a checkout without installing the package
    import lightning_afm  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_batches(vocab_sizes: list[int], rows: int, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    categorical = torch.from_numpy(np.stack([rng.integers(0, v, size=rows) for v in vocab_sizes], axis=1))
    numeric = torch.from_numpy(rng.random((rows, NUM_NUMERIC), dtype=np.float32))
    label = torch.from_numpy((rng.random(rows) < 0.25).astype(np.float32))
    return [
        {"categorical": categorical[i : i + batch_size], "numeric": numeric[i : i + batch_size], "label": label[i : i + batch_size]}
        for i in range(0, rows, batch_size)
    ]


# -- the step functions ------------------------------------------------------------
def ours_step_fn(vocab_sizes, args, fused: bool = True) -> Callable[[dict], None]:
    from lightning_afm.data.schema import Schema
    from lightning_afm.models import DeepFM

    torch.manual_seed(args.seed)
    model = DeepFM(Schema.from_vocab_sizes(vocab_sizes, numeric=NUM_NUMERIC), embedding_dim=16,
                   mlp_hidden=[400, 400, 400], dropout=0.5, lr=1e-4, l2_reg=args.l2).train()
    opt = model.configure_optimizers() if fused else torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(b: dict) -> None:
        logits, codes, lr_weights = model.forward_parts(b["categorical"], b["numeric"])
        loss = F.binary_cross_entropy_with_logits(logits, b["label"])
        if args.l2 > 0:
            loss = loss + model.l2_penalty(codes, lr_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def build_deepctr(vocab_sizes, args, l2: float):
    from dataclasses import replace

    from lightning_afm.bench.deepctr import build_deepctr_model
    from lightning_afm.bench.shapes import paper_shape

    # the paper's Criteo shape (embedding 16, MLP 3 x 400, 13 numeric fields) with these tables
    shape = replace(paper_shape("criteo"), vocab_sizes=list(vocab_sizes))
    model = build_deepctr_model("deepfm", shape, seed=args.seed, dnn_dropout=0.5, l2_reg_linear=l2, l2_reg_embedding=l2)
    model.compile(torch.optim.Adam(model.parameters(), lr=1e-4), "binary_crossentropy")
    return model


def deepctr_step_fn(vocab_sizes, args, l2: float) -> Callable[[dict], None]:
    model = build_deepctr(vocab_sizes, args, l2).train()

    def step(b: dict) -> None:  # the body of deepctr_torch BaseModel.fit's loop
        if "x" not in b:  # DeepCTR-Torch reads one float matrix: ids, then numeric values
            b["x"] = torch.cat([b["categorical"].float(), b["numeric"]], dim=1)
        y_pred = model(b["x"]).squeeze()
        model.optim.zero_grad()
        loss = model.loss_func(y_pred, b["label"], reduction="sum")
        total = loss + model.get_regularization_loss() + model.aux_loss
        loss.item()
        total.item()
        total.backward()
        model.optim.step()

    return step


def step_timer(step: Callable[[dict], None]) -> Callable[[list[dict]], list[float]]:
    """Turn a step function into a runner: batches in, per-step seconds out."""

    def run(batches: list[dict]) -> list[float]:
        times = []
        for b in batches:
            t = time.perf_counter()
            step(b)
            times.append(time.perf_counter() - t)
        return times

    return run


def ours_lightning_interleaved(vocab_sizes, args, others: dict[str, Callable[[list[dict]], list[float]]],
                               batches: list[dict]) -> dict[str, list[float]]:
    """One ``Trainer.fit`` of our DeepFM over ``batches``; every ``block`` Lightning steps a
    callback runs a block of each of ``others`` on the same batches. Lightning's step
    time is the interval between successive batch starts, less the time spent in
    the other loops in between."""
    import lightning as L

    from lightning_afm.data.schema import Schema
    from lightning_afm.models import DeepFM

    torch.manual_seed(args.seed)
    model = DeepFM(Schema.from_vocab_sizes(vocab_sizes, numeric=NUM_NUMERIC), embedding_dim=16,
                   mlp_hidden=[400, 400, 400], dropout=0.5, lr=1e-4, l2_reg=args.l2)
    times: dict[str, list[float]] = {name: [] for name in others}
    for run in others.values():
        run(batches[: args.warmup])

    class Interleave(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.away: list[float] = []  # seconds spent in the other loops before each start

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.end = time.perf_counter()
            done = batch_idx + 1 - args.warmup
            away = 0.0
            if done > 0 and done % args.block == 0:
                chunk = batches[batch_idx + 1 - args.block : batch_idx + 1]
                t = time.perf_counter()
                for name, run in others.items():
                    times[name].extend(run(chunk))
                away = time.perf_counter() - t
            self.away.append(away)

    cb = Interleave()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                        num_sanity_val_steps=0)
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False))
    # intervals between batch starts cover the whole loop: data, hooks, logging, optimizer
    intervals = np.diff(cb.starts + [cb.end]) - np.array(cb.away)
    times["ours, Lightning Trainer.fit, reused heap"] = list(intervals[args.warmup :])
    return times


def interleaved(runners: dict[str, Callable[[list[dict]], list[float]]], batches, rounds: int, block: int,
                warmup: int) -> dict[str, list[float]]:
    """Per-step seconds of each runner, run in alternating blocks of ``block`` steps."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run(batches[:warmup])
    for r in range(rounds):
        chunk = [batches[(warmup + r * block + j) % len(batches)] for j in range(block)]
        for name, run in runners.items():
            times[name].extend(run(chunk))
    return times


# -- one process per allocator setting ---------------------------------------------
def child(args) -> None:
    from lightning_afm.runtime import reuse_freed_memory

    vocab_sizes = [min(v, args.vocab_cap) for v in CRITEO_CARDINALITIES]
    batches = make_batches(vocab_sizes, (args.rounds * args.block + args.warmup) * args.batch_size, args.batch_size, args.seed)
    reuse = args.child == "reuse"
    if reuse:
        reuse_freed_memory()
    tag = "reused heap" if reuse else "default allocator"
    runners = {f"ours, pure loop, {tag}": step_timer(ours_step_fn(vocab_sizes, args))}
    if args.have_deepctr:
        runners[f"DeepCTR-Torch, pure loop, {tag}"] = step_timer(deepctr_step_fn(vocab_sizes, args, args.l2))
    if args.ablations and reuse:
        runners[f"ours, pure loop, {tag}, plain Adam"] = step_timer(ours_step_fn(vocab_sizes, args, fused=False))
        if args.have_deepctr:
            runners[f"DeepCTR-Torch, pure loop, {tag}, no L2"] = step_timer(deepctr_step_fn(vocab_sizes, args, 0.0))
    if reuse:  # the app applies reuse_freed_memory before a fit, so Lightning runs here
        results = ours_lightning_interleaved(vocab_sizes, args, runners, batches)
    else:
        results = interleaved(runners, batches, args.rounds, args.block, args.warmup)
    for name, t in results.items():
        print(f"RESULT {args.batch_size / statistics.median(t)}\t{name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6, help="alternations of the interleaved loops")
    p.add_argument("--block", type=int, default=8, help="steps per model per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--vocab-cap", type=int, default=100_000, help="cap on each Criteo field's vocabulary")
    p.add_argument("--l2", type=float, default=1e-5, help="L2 ratio for both models (paper: 1e-5)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ablations", action="store_true", help="also time plain Adam (ours) and no L2 (DeepCTR-Torch)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--have-deepctr", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.child:  # prints RESULT lines; the parent ignores everything else
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            child(args)
        return

    try:
        import deepctr_torch  # noqa: F401

        have_deepctr = True
    except ImportError as e:
        have_deepctr = False
        print(f"DeepCTR-Torch not importable ({e}); its measurements are skipped. To compare, install it with "
              "`pip install --no-deps deepctr-torch==0.3.0 requests`.")

    vocab_sizes = [min(v, args.vocab_cap) for v in CRITEO_CARDINALITIES]
    print(
        f"DeepFM, emb 16, MLP 3x400, dropout 0.5, batch {args.batch_size}, {len(vocab_sizes)} fields "
        f"({sum(vocab_sizes):,} rows in all), {NUM_NUMERIC} numeric, L2 {args.l2}, Adam lr 1e-4; "
        f"{args.rounds} rounds x {args.block} steps per model after {args.warmup} warm-up steps; "
        f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads; samples/s from median step time"
    )
    passthrough = [f"--rounds={args.rounds}", f"--block={args.block}", f"--warmup={args.warmup}",
                   f"--batch-size={args.batch_size}", f"--vocab-cap={args.vocab_cap}", f"--l2={args.l2}",
                   f"--threads={args.threads}", f"--seed={args.seed}", f"--have-deepctr={int(have_deepctr)}"]
    if args.ablations:
        passthrough.append("--ablations")
    results: dict[str, float] = {}
    for which in ("default", "reuse"):
        proc = subprocess.run([sys.executable, __file__, f"--child={which}", *passthrough], capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"  {which}: FAILED\n{proc.stderr[-3000:]}")
            continue
        for line in lines:
            value, name = line[len("RESULT "):].split("\t")
            results[name] = float(value)
            print(f"  {name:56s} {results[name]:9,.0f} samples/s", flush=True)

    pairs = [
        ("ours, pure loop, default allocator", "DeepCTR-Torch, pure loop, default allocator", "pure loops, default allocator"),
        ("ours, pure loop, reused heap", "DeepCTR-Torch, pure loop, reused heap", "pure loops, reused heap"),
        ("ours, Lightning Trainer.fit, reused heap", "DeepCTR-Torch, pure loop, reused heap", "ours in Lightning vs DeepCTR-Torch pure loop, reused heap"),
    ]
    shown = [(a, b, label) for a, b, label in pairs if a in results and b in results]
    if shown:
        print("speed-up (ours / DeepCTR-Torch):")
        for a, b, label in shown:
            print(f"  {label:56s} {results[a] / results[b]:5.2f}x")


if __name__ == "__main__":
    main()
