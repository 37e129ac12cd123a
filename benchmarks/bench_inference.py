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
vocabularies number them), random numeric fields; ``torch.inference_mode``, models in eval
mode. The structures of one model run interleaved, round after round (one forward each per
round, cycling through ``--batches`` prebuilt batches), so other load on the machine hits
them alike; figures are samples/s from the MEDIAN forward time, and gains are relative to
the baseline measured in the same rounds.

``--reference`` adds, in the same rounds, every structure run through the per-field loop
(one lookup and one projection per field, stacked; the ReLU between the factors out of
place): the code before the batched paths of ``FieldEmbedding`` / ``LinearLogit`` /
``LowRankLinear`` / ``project_fields``, so their effect is measured side by side.
``--breakdown`` also times the parts of the forward: the embedding lookups (``codes``), the
per-field projections (``project``), the LR lookups, the MLP, and the rest (interaction part
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
import contextlib
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
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
from lightning_afm.models.allocator import reuse_freed_memory  # noqa: E402
from lightning_afm.models.layers.embedding import FieldEmbedding  # noqa: E402
from lightning_afm.models.layers.linear_logit import LinearLogit  # noqa: E402

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


# --------------------------------------------------------------------------- the per-field loop


def _loop_codes(self: FieldEmbedding, categorical: torch.Tensor) -> torch.Tensor:
    outs = []
    for i, table in enumerate(self.tables()):
        idx = categorical[:, i]
        outs.append(table.codes(idx) if hasattr(table, "codes") else table(idx))
    return torch.stack(outs, dim=1)


def _loop_project(self: FieldEmbedding, codes: torch.Tensor) -> torch.Tensor:
    if not self.is_factored:
        return codes
    outs = []
    for i, table in enumerate(self.tables()):
        outs.append(table.project(codes[:, i]) if hasattr(table, "project") else codes[:, i])
    return torch.stack(outs, dim=1)


def _loop_lookup(self: LinearLogit, categorical: torch.Tensor) -> torch.Tensor:
    if not self.module_names:
        return categorical.new_zeros((categorical.shape[0], 0), dtype=torch.float32)
    return torch.cat([t(categorical[:, i]) for i, t in enumerate(self.tables())], dim=1)


def _loop_low_rank(self: LowRankLinear, x: torch.Tensor) -> torch.Tensor:
    h = self.first(x)
    if self.relu:
        h = torch.relu(h)
    return self.second(h)


@contextlib.contextmanager
def per_field_loop() -> Iterator[None]:
    """Run the models through the per-field loop (the code before the batched paths)."""
    patches = [(FieldEmbedding, "codes", _loop_codes), (FieldEmbedding, "project", _loop_project),
               (LinearLogit, "lookup", _loop_lookup), (LowRankLinear, "forward", _loop_low_rank)]
    saved = [(cls, attr, cls.__dict__[attr]) for cls, attr, _ in patches]
    try:
        for cls, attr, fn in patches:
            setattr(cls, attr, fn)
        yield
    finally:
        for cls, attr, fn in saved:
            setattr(cls, attr, fn)


# --------------------------------------------------------------------------- timing


def _mlp_input(model: CTRModel, categorical: torch.Tensor, numeric: torch.Tensor | None) -> torch.Tensor:
    seen: dict[str, torch.Tensor] = {}
    handle = model.mlp.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    try:
        model(categorical, numeric)
    finally:
        handle.remove()
    return seen["x"]


def part_calls(model: CTRModel, categorical: torch.Tensor, numeric: torch.Tensor | None) -> dict[str, Callable]:
    """Callables running each part of ``model``'s forward on one batch, inputs precomputed."""
    num = model._check_inputs(categorical, numeric)
    codes = model.embeddings.codes(categorical)
    emb = model.embeddings.project(codes)
    folded = getattr(model, "foldable_projections", lambda: None)()
    if folded is not None:  # FiBiNet on codes: the MLP starts from the folded first Linear
        folded_input = model.code_mlp_input(codes, emb, num, folded)
        mlp = lambda: model.code_mlp(*folded_input)  # noqa: E731
    else:
        x = _mlp_input(model, categorical, numeric)
        mlp = lambda: model.mlp(x)  # noqa: E731
    return {
        "lookups": lambda: model.embeddings.codes(categorical),
        "projections": lambda: model.embeddings.project(codes),
        "LR lookups": lambda: model.linear.combine(model.linear.lookup(categorical), num),
        "MLP": mlp,
        "deep part": lambda: model.deep_logit(codes, emb, num),
    }


#: What a forward is timed with: wall-clock time, or the CPU time of the calling thread
#: (``--clock cpu``, with ``--threads 1`` only: then every op runs on that thread, and the time
#: others' processes hold the core is not counted, so a busy shared machine still gives
#: steady ratios).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = time.perf_counter


def _elapsed(fn: Callable[[], object], context: Callable[[], contextlib.AbstractContextManager]) -> float:
    with context():
        start = _clock()
        fn()
        return _clock() - start


def run_model(models: dict[str, CTRModel], batches, rounds: int, reference: bool, breakdown: bool) -> dict:
    """Median seconds per forward (and per part) of every (variant, mode), measured interleaved."""
    modes = {"batched": contextlib.nullcontext}
    if reference:
        modes["per-field loop"] = per_field_loop
    forward: dict[tuple[str, str], list[float]] = {(v, m): [] for v in models for m in modes}
    parts: dict[tuple[str, str, str], list[float]] = {}
    with torch.inference_mode():
        calls = {}
        for mode, context in modes.items():
            for variant, model in models.items():
                with context():
                    model(*batches[0])  # warm-up
                    if breakdown:
                        calls[variant, mode] = [part_calls(model, *b) for b in batches]
                        for fn in calls[variant, mode][0].values():
                            fn()
        for r in range(rounds):
            batch = batches[r % len(batches)]
            for mode, context in modes.items():
                for variant, model in models.items():
                    forward[variant, mode].append(_elapsed(lambda: model(*batch), context))
                    if breakdown:
                        for part, fn in calls[variant, mode][r % len(batches)].items():
                            parts.setdefault((variant, mode, part), []).append(_elapsed(fn, context))
    result = {"forward": {k: statistics.median(v) for k, v in forward.items()}, "parts": {}}
    for (variant, mode, part), times in parts.items():
        result["parts"][variant, mode, part] = statistics.median(times)
    for variant, mode in forward:  # the rest of the deep part: interaction layers and output
        if (variant, mode, "deep part") in result["parts"]:
            deep = result["parts"].pop((variant, mode, "deep part"))
            result["parts"][variant, mode, "rest of deep part"] = deep - result["parts"][variant, mode, "MLP"]
    return result


# --------------------------------------------------------------------------- report


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
    parser.add_argument("--reference", action="store_true", help="also time the per-field loop")
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
            head += " per-field loop samples/s | gain | speed-up |"
        print(f"## {dataset}\n\n{head}\n|" + "---|" * (head.count("|") - 1), flush=True)
        for name in args.models:
            rows = []
            models = build_structures(name, dataset, args.vocab_cap)
            result = run_model(models, batches, args.rounds, args.reference, args.breakdown)
            forward = result["forward"]
            for variant, model in models.items():
                t = forward[variant, "batched"]
                gain = 100.0 * (forward["baseline", "batched"] / t - 1.0)
                row = f"| {name} | {variant} | {count_parameters(model):,} | {args.batch / t:,.0f} | {gain:+.1f} % |"
                if args.reference:
                    loop = forward[variant, "per-field loop"]
                    loop_gain = 100.0 * (forward["baseline", "per-field loop"] / loop - 1.0)
                    row += f" {args.batch / loop:,.0f} | {loop_gain:+.1f} % | {loop / t:.2f}x |"
                rows.append(row)
                for mode in ("batched", "per-field loop") if args.reference else ("batched",):
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
            print("| model | variant | path | " + " | ".join(PARTS) + " | sum of parts | forward |")
            print("|" + "---|" * (len(PARTS) + 5))
            print("\n".join(breakdown_rows))
            print()


if __name__ == "__main__":
    main()
