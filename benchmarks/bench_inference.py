"""CPU inference throughput of the seven models at the paper's shapes: baseline, +AFM MLP, +AFM EMB.

Each model is built at the Criteo or Avazu shape of the paper (the full cardinalities, each
capped at ``--vocab-cap`` rows; ``--vocab-cap 0`` keeps the full tables: DeepFM on Criteo is
then 2.3 GB) in three structures, built as ``benchmarks/param_counts.py`` builds them but on
the CPU with finite values:

* ``baseline``: the model as trained;
* ``afm_mlp``: MLP layers 2 and 3 as :class:`LowRankLinear` with the ReLU between the factors
  (rank 64 on Criteo, 320 on Avazu);
* ``afm_emb``: additionally every table as a :class:`LowRankEmbedding` (k = 2 / 8) and, where
  the model's MLP reads the embeddings directly, the per-field projections folded into the
  first MLP Linear (:func:`fold_into_first_linear`).

The structures share the tables they have in common (``afm_mlp`` reads the baseline's
tables), so the full-size run holds one copy of them. Inputs: batches of ``--batch`` rows
with ids drawn Zipf-like per field (``--zipf``; frequent values have low ids, as our
vocabularies number them), random numeric fields; ``torch.inference_mode``, each structure in
its inference form (:func:`lightning_afm.inference.optimize_for_inference`). The structures of one model run interleaved, round after round (one forward each per
round, cycling through ``--batches`` prebuilt batches), so other load on the machine hits
them alike; figures are samples/s from the MEDIAN forward time, and gains are relative to
the baseline measured in the same rounds.

``--reference`` adds, in the same rounds, every structure run through the training model's own
forward in eval mode (one lookup and one projection per field, stacked; the ReLU between the
factors out of place; cross networks at their own width; FiBiNet's bilinear layers unfolded),
so the effect of the inference structures is measured side by side.
``--breakdown`` also times the parts of the forward: the embedding lookups, the
projections, the LR lookups, the MLP, and the rest (interaction part
and output layer: ``deep_logit`` minus the MLP, a difference of two medians, so on a busy
machine it can even come out negative).

``--threads 1 --clock cpu`` times the CPU time of the one thread doing the work instead of
the wall clock: on a machine shared with other processes, every parallel region of a
2-thread run waits whenever another process holds the second core, which swamps the
differences measured here; the single-thread CPU time stays steady (the paper's setting
remains 2 threads on the wall clock, for a quiet machine).

Freed blocks are kept in the heap (:func:`reuse_freed_memory`, as a fit does), as a serving
process that has warmed up would: otherwise every forward page-faults its activations in
anew, which on this machine costs more than some of the parts measured here.

    .venv/bin/python benchmarks/bench_inference.py
    .venv/bin/python benchmarks/bench_inference.py --models deepfm --reference --breakdown
    .venv/bin/python benchmarks/bench_inference.py --models deepfm --datasets criteo avazu --vocab-cap 0
    .venv/bin/python benchmarks/bench_inference.py --threads 1 --clock cpu --reference --rounds 11
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:  # run from a checkout without installing the package
    import lightning_afm  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_afm.compress import (  # noqa: E402
    LowRankEmbedding, LowRankLinear, fold_into_first_linear, get_submodule, resolve_targets, set_submodule,
)
from lightning_afm.data.schema import Schema  # noqa: E402
from lightning_afm.models import DEFAULT_EMBEDDING_TARGETS, DEFAULT_MLP_TARGETS, MODELS, CTRModel, count_parameters  # noqa: E402
from lightning_afm.runtime import reuse_freed_memory  # noqa: E402
from lightning_afm.inference import InferenceModel, optimize_for_inference  # noqa: E402
from lightning_afm.inference.fibinet import FoldedFiBiNetHead  # noqa: E402

CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
          27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
AVAZU = [240, 7, 7, 4737, 7745, 26, 8552, 559, 36, 2686408, 6729486, 8251, 5, 4, 2626, 8, 9, 435, 4, 68, 172, 60]
DATASETS = {
    # name: (vocab sizes, numeric fields, embedding dim, MLP width, MLP rank, embedding rank)
    "criteo": (CRITEO, 13, 16, 400, 64, 2),
    "avazu": (AVAZU, 0, 50, 2000, 320, 8),
}
VARIANTS = ("baseline", "afm_mlp", "afm_emb")
PARTS = ("lookups", "projections", "LR lookups", "MLP", "rest of deep part")


# --------------------------------------------------------------------------- structures


def _swap(model: nn.Module, names: list[str], build: Callable[[nn.Module], nn.Module]) -> None:
    for name in names:
        set_submodule(model, name, build(get_submodule(model, name)))


def build_structures(name: str, dataset: str, vocab_cap: int) -> dict[str, CTRModel]:
    """``{variant: model}`` in eval mode; the variants share the tables they have in common."""
    vocab, numeric, dim, width, mlp_rank, emb_rank = DATASETS[dataset]
    if vocab_cap > 0:
        vocab = [min(v, vocab_cap) for v in vocab]
    schema = Schema.from_vocab_sizes(vocab, numeric=numeric).to_dict()
    torch.manual_seed(0)
    base = MODELS[name](schema=schema, embedding_dim=dim, mlp_hidden=[width] * 3).eval()

    # afm_mlp: a copy of everything but the tables (the memo makes deepcopy share them)
    shared = {id(base.embeddings): base.embeddings, id(base.linear): base.linear}
    afm_mlp = copy.deepcopy(base, memo=dict(shared))
    _swap(afm_mlp, resolve_targets(afm_mlp, DEFAULT_MLP_TARGETS, "linear"),
          lambda old: LowRankLinear(old.in_features, old.out_features, mlp_rank, relu=True))

    # afm_emb: its own FieldEmbedding (its tables are replaced), the LR tables shared
    shared = {id(t): t for t in base.embeddings.tables()}
    shared[id(base.linear)] = base.linear
    afm_emb = copy.deepcopy(afm_mlp, memo=shared)
    _swap(afm_emb, resolve_targets(afm_emb, DEFAULT_EMBEDDING_TARGETS, "embedding"),
          lambda old: LowRankEmbedding(old.num_embeddings, old.embedding_dim, emb_rank))
    if type(afm_emb).MLP_READS_EMBEDDINGS:
        fold_into_first_linear(afm_emb)
    return {"baseline": base, "afm_mlp": afm_mlp.eval(), "afm_emb": afm_emb.eval()}


def make_batches(dataset: str, vocab_cap: int, batch: int, count: int, zipf: float, seed: int = 0):
    """``count`` batches of ``(categorical [B, F] int64, numeric [B, N] or None)``."""
    vocab, numeric, *_ = DATASETS[dataset]
    if vocab_cap > 0:
        vocab = [min(v, vocab_cap) for v in vocab]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        if zipf > 0:
            # Zipf-like ids: rank r has probability ~ r^-a; our vocabularies give the most
            # frequent values the lowest ids. Ranks beyond the table wrap around.
            cols = [(rng.zipf(zipf, batch) - 1) % v for v in vocab]
        else:
            cols = [rng.integers(0, v, batch) for v in vocab]
        categorical = torch.from_numpy(np.stack(cols, axis=1).astype(np.int64))
        values = torch.from_numpy(rng.random((batch, numeric), dtype=np.float32)) if numeric else None
        out.append((categorical, values))
    return out


# --------------------------------------------------------------------------- the parts of a forward


def _input_of(module: nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """The input ``module`` receives while ``run()`` runs (through a forward pre-hook)."""
    seen: dict[str, torch.Tensor] = {}
    handle = module.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    try:
        run()
    finally:
        handle.remove()
    return seen["x"]


def plain_parts(model: CTRModel, categorical: torch.Tensor, numeric: torch.Tensor | None) -> dict[str, Callable]:
    """Callables running each part of the training model's own forward on one batch, inputs precomputed."""
    num = model._check_inputs(categorical, numeric)
    codes = model.embeddings.codes(categorical)
    emb = model.embeddings.project(codes)
    x = _input_of(model.mlp, lambda: model(categorical, numeric))
    return {
        "lookups": lambda: model.embeddings.codes(categorical),
        "projections": lambda: model.embeddings.project(codes),
        "LR lookups": lambda: model.linear.combine(model.linear.lookup(categorical), num),
        "MLP": lambda: model.mlp(x),
        "deep part": lambda: model.deep_logit(codes, emb, num),
    }


def optimized_parts(fast: InferenceModel, categorical: torch.Tensor, numeric: torch.Tensor | None) -> dict[str, Callable]:
    """The same parts of the inference form (:func:`optimize_for_inference`)."""
    num = fast._check_inputs(categorical, numeric)
    codes, _ = fast.lookup(categorical)
    emb = fast.project(codes) if fast.build_embeddings else codes.new_empty(0)
    head = fast.deep
    # a fused lookup gathers the LR weights with the codes ("lookups"): "LR lookups" is then the numeric part
    separate_lr = getattr(fast.lookup, "lr", None)
    if isinstance(head, FoldedFiBiNetHead):  # FiBiNet on codes: the MLP starts from the folded first Linear
        x, weight, bias = head.code_mlp_input(codes, emb, num)
        mlp = lambda: head.rest(head.first.after_linear(F.linear(x, weight, bias)))  # noqa: E731
    else:
        x = _input_of(head.mlp, lambda: fast(categorical, numeric))
        mlp = lambda: head.mlp(x)  # noqa: E731
    return {
        "lookups": lambda: fast.lookup(categorical) if separate_lr is None else fast.lookup.codes(categorical.t().contiguous()),
        "projections": lambda: fast.project(codes),
        "LR lookups": lambda: (separate_lr(categorical.t().contiguous()).flatten(1).sum(1) if separate_lr is not None else 0.0)
        + (fast.lr_numeric(num).squeeze(-1) if fast.lr_numeric is not None else 0.0),
        "MLP": mlp,
        "deep part": lambda: head(codes, emb, num),
    }


#: What a forward is timed with: wall-clock time, or the CPU time of the calling thread
#: (``--clock cpu``, with ``--threads 1`` only: then every op runs on that thread, and the time
#: others' processes hold the core is not counted, so a busy shared machine still gives
#: steady ratios).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = time.perf_counter


def _elapsed(fn: Callable[[], object]) -> float:
    start = _clock()
    fn()
    return _clock() - start


def run_model(models: dict[str, CTRModel], batches, rounds: int, reference: bool, breakdown: bool) -> dict:
    """Median seconds per forward (and per part) of every (variant, form), measured interleaved.

    Forms: ``optimized`` (:func:`optimize_for_inference`, sharing the model's weights) and, with
    ``reference``, ``plain`` (the training model's own forward in eval mode).
    """
    runs: dict[tuple[str, str], Callable] = {}
    parts_of: dict[tuple[str, str], Callable] = {}
    for variant, model in models.items():
        fast = optimize_for_inference(model)
        runs[variant, "optimized"], parts_of[variant, "optimized"] = fast, functools.partial(optimized_parts, fast)
        if reference:
            runs[variant, "plain"], parts_of[variant, "plain"] = model, functools.partial(plain_parts, model)
    forward: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    parts: dict[tuple[str, str, str], list[float]] = {}
    with torch.inference_mode():
        calls = {}
        for key, run in runs.items():
            run(*batches[0])  # warm-up
            if breakdown:
                calls[key] = [parts_of[key](*b) for b in batches]
                for fn in calls[key][0].values():
                    fn()
        for r in range(rounds):
            batch = batches[r % len(batches)]
            for key, run in runs.items():
                forward[key].append(_elapsed(lambda: run(*batch)))
                if breakdown:
                    for part, fn in calls[key][r % len(batches)].items():
                        parts.setdefault((*key, part), []).append(_elapsed(fn))
    result = {"forward": {k: statistics.median(v) for k, v in forward.items()}, "parts": {}}
    for (variant, form, part), times in parts.items():
        result["parts"][variant, form, part] = statistics.median(times)
    for variant, form in forward:  # the rest of the deep part: interaction layers and output
        if (variant, form, "deep part") in result["parts"]:
            deep = result["parts"].pop((variant, form, "deep part"))
            result["parts"][variant, form, "rest of deep part"] = deep - result["parts"][variant, form, "MLP"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--datasets", nargs="+", default=["criteo"], choices=list(DATASETS))
    parser.add_argument("--vocab-cap", type=int, default=100_000, help="rows per table at most; 0: full tables")
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=3, help="distinct batches, cycled over the rounds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--zipf", type=float, default=1.2, help="Zipf exponent of the ids (0: uniform)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall: wall-clock time; cpu: the thread's CPU time (needs --threads 1)")
    parser.add_argument("--reference", action="store_true",
                        help="also time the training model's own forward (no inference structures)")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of the forward")
    args = parser.parse_args()

    reuse_freed_memory()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu times the calling thread only: it needs --threads 1")
    global _clock
    _clock = CLOCKS[args.clock]
    cap = "full tables" if args.vocab_cap <= 0 else f"vocab cap {args.vocab_cap:,}"
    print(f"batch {args.batch:,}, {cap}, Zipf {args.zipf}, {torch.get_num_threads()} threads, {args.clock} clock, "
          f"median of {args.rounds} interleaved rounds, torch {torch.__version__}\n")
    for dataset in args.datasets:
        batches = make_batches(dataset, args.vocab_cap, args.batch, args.batches, args.zipf)
        breakdown_rows = []
        head = "| model | variant | params | samples/s | gain |"
        if args.reference:
            head += " plain model samples/s | gain | speed-up |"
        print(f"## {dataset}\n\n{head}\n|" + "---|" * (head.count("|") - 1), flush=True)
        for name in args.models:
            rows = []
            models = build_structures(name, dataset, args.vocab_cap)
            result = run_model(models, batches, args.rounds, args.reference, args.breakdown)
            forward = result["forward"]
            for variant, model in models.items():
                t = forward[variant, "optimized"]
                gain = 100.0 * (forward["baseline", "optimized"] / t - 1.0)
                row = f"| {name} | {variant} | {count_parameters(model):,} | {args.batch / t:,.0f} | {gain:+.1f} % |"
                if args.reference:
                    loop = forward[variant, "plain"]
                    loop_gain = 100.0 * (forward["baseline", "plain"] / loop - 1.0)
                    row += f" {args.batch / loop:,.0f} | {loop_gain:+.1f} % | {loop / t:.2f}x |"
                rows.append(row)
                for mode in ("optimized", "plain") if args.reference else ("optimized",):
                    if (variant, mode, "MLP") in result["parts"]:
                        ms = [1e3 * result["parts"][variant, mode, p] for p in PARTS]
                        breakdown_rows.append(
                            f"| {name} | {variant} | {mode} | " + " | ".join(f"{x:.1f}" for x in ms)
                            + f" | {sum(ms):.1f} | {1e3 * forward[variant, mode]:.1f} |"
                        )
            del models
            print("\n".join(rows), flush=True)
        print()
        if breakdown_rows:
            print(f"### {dataset}: where the time goes (ms per batch of {args.batch:,})\n")
            print("| model | variant | form | " + " | ".join(PARTS) + " | sum of parts | forward |")
            print("|" + "---|" * (len(PARTS) + 5))
            print("\n".join(breakdown_rows))
            print()


if __name__ == "__main__":
    main()
