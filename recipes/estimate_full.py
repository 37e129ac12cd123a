"""Estimate each recipe's full-mode run time on this machine from measured throughput.

No data needed: at the paper's full shapes (``lightning_afm.bench.shapes``), times the steps a
full run is made of, for one model (DeepFM by default):

* a training step of the baseline at the baseline batch (Criteo 1000, Avazu 500);
* a training step of the +AFM MLP structure at the MLP finetune batch (20000 / 10000);
* a training step of the +AFM EMB structure at the embedding finetune batch (10000 / 5000),
  and at the baseline batch (``compression=scratch`` trains it so);
* a no-grad forward at batch 10,000 (the test evaluations; a statistics pass counts as 1.5
  forwards, after ``benchmarks/bench_statistics.py``: 1.17x for the tables, 1.54x for the MLP).

Every step trains with the regularisation full mode uses (``--settings paper``, the default): the
data config's ``model.weight_decay``, ``l2_reg`` and ``l2`` (``conf/data/criteo.yaml`` /
``avazu.yaml``: Adam's weight decay 1e-3, paper line 1086, and equation 13's L2 over every table
entry at every step, ``l2: full``, line 1087-1100), whose cost per step grows with the tables'
rows where the looked-up rows' does not. ``--settings light`` times the model configs' defaults
(weight decay 0, ``l2: rows``) and ``--settings paper light`` both, side by side in one process,
with their ratio.

Each step is timed ``--steps`` times after a warm-up (median), one structure at a time: the
model is compressed in place (``method="random"``: the structure, no statistics), so memory
stays at one model (Criteo: 574M parameters, about 10 GB with Adam's state while training with
``light``; ``paper``'s full L2 term needs more: killed at 13.5 GB on a shared 23 GB machine,
2026-11-30, hence ``--vocab-cap``).
Then each recipe's runs are added up: rows per epoch x seconds per row, plus the evaluations
and statistics passes. Other models are assumed as fast as the timed one (at full vocabulary
the dense Adam update of the tables dominates a training step, the same for all seven); the
TT-Rec finetune is counted as fast as the AFM EMB one (not timed). The one-time preprocessing
of each raw file (a few minutes) and lightning-afm-bench (table2) are not included.

    .venv/bin/python recipes/estimate_full.py
    .venv/bin/python recipes/estimate_full.py --datasets criteo --steps 3
    .venv/bin/python recipes/estimate_full.py --settings paper light --vocab-cap 2000000
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lightning_afm.bench.shapes import paper_shape
from lightning_afm.compress import compress_targets, resolve_targets
from lightning_afm.compress import fold_into_first_linear
from lightning_afm.models import DEFAULT_EMBEDDING_TARGETS, DEFAULT_MLP_TARGETS, MODELS
from lightning_afm.runtime import reuse_freed_memory

#: The data configs holding each dataset's regularisation (``model.weight_decay`` / ``l2_reg`` / ``l2``).
DATA_CONFIGS = Path(__file__).resolve().parents[1] / "lightning_afm" / "conf" / "data"
#: The model configs' defaults (what ``data=criteo`` / ``data=avazu`` trained with before the paper's settings).
LIGHT = {"weight_decay": 0.0, "l2": "rows"}

#: Rows of the full files and the paper's splits (Criteo 90/10, Avazu 80/20).
ROWS = {"criteo": 45_840_617, "avazu": 40_428_967}
TEST_FRACTION = {"criteo": 0.1, "avazu": 0.2}
#: The paper's batches: baseline, MLP finetune, embedding finetune.
BATCHES = {"criteo": (1000, 20000, 10000), "avazu": (500, 10000, 5000)}
EVAL_BATCH = 10000
STATS_OVER_FORWARD = 1.5

#: Each recipe's runs per dataset (run kinds as in ``run_seconds``).
RECIPES = {
    "table2": ["afm"] * 7,
    "table4": ["afm", "svd", "afm_emb", "svd_emb", "ttd_emb", "ttd_emb"],  # ttd_emb and ttd_svd_emb
    "table6": ["afm_mlp"] * 3,  # relu_init=shift, relu_init=plain, relu=false
    "table7": ["afm_emb"] * 4,
    "table8": ["afm_mlp"] * 4,
    "table11": ["spectra"] * 7,
    "table13": ["afm"] * 5,
    "table14": ["afm_mlp", "afm", "scratch_mlp", "scratch", "scratch_1_epoch"],
    "table15": ["afm_mlp_train"] * 5,
    "table16": ["afm"] * 7,
    "table17": ["afm", "pq_emb", "qr_emb"],
}


def _batch(shape, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uniform ids per field ``[B, F]``, numeric in [0, 1] ``[B, N]``, labels ``[B]``."""
    ids = torch.stack([torch.randint(0, v, (size,), generator=generator) for v in shape.vocab_sizes], 1)
    numeric = torch.rand(size, shape.num_numeric, generator=generator)
    label = (torch.rand(size, generator=generator) < 0.25).float()
    return ids, numeric, label


def _median_seconds(step: Callable[[], None], steps: int) -> float:
    step()  # warm-up: allocations, Adam's state
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _train_row_seconds(model, shape, batch: int, steps: int, generator) -> float:
    """Seconds per row of a training step (forward, loss + L2, backward, the model's Adam)."""
    model.train()
    optimizer = model.configure_optimizers()
    ids, numeric, label = _batch(shape, batch, generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits, codes, lr_weights = model.forward_parts(ids, numeric)
        loss = F.binary_cross_entropy_with_logits(logits, label) + model.l2_penalty(codes, lr_weights)
        loss.backward()
        optimizer.step()

    return _median_seconds(step, steps) / batch


def _forward_row_seconds(model, shape, steps: int, generator) -> float:
    model.eval()
    ids, numeric, _ = _batch(shape, EVAL_BATCH, generator)
    with torch.inference_mode():
        return _median_seconds(lambda: model(ids, numeric), steps) / EVAL_BATCH


def regularization(dataset: str, settings: str) -> dict[str, object]:
    """The model's regularisation keywords for ``settings``: ``paper`` reads the data config full
    mode trains with (``conf/data/<dataset>.yaml``, keys ``weight_decay``, ``l2_reg``, ``l2``), ``light``
    is the model configs' weight decay 0 and L2 over the looked-up rows."""
    if settings == "light":
        return dict(LIGHT)
    if settings != "paper":
        raise ValueError(f"settings must be 'paper' or 'light', got {settings!r}")
    model = OmegaConf.load(DATA_CONFIGS / f"{dataset}.yaml").get("model", {})
    return {key: model[key] for key in ("weight_decay", "l2_reg", "l2") if key in model}


def measure(dataset: str, model_name: str, steps: int, settings: str = "paper",
            vocab_cap: int | None = None) -> dict[str, float]:
    """Seconds per row of each kind of pass, at the paper's full shape of ``dataset`` (tables capped
    at ``vocab_cap`` rows if given), trained with the regularisation of ``settings`` (:func:`regularization`)."""
    shape = paper_shape(dataset, vocab_cap)
    base_batch, mlp_batch, emb_batch = BATCHES[dataset]
    reuse_freed_memory()  # as the app before a fit: the dense table gradients reuse freed heap blocks
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = MODELS[model_name](schema=shape.schema().to_dict(), embedding_dim=shape.embedding_dim,
                               mlp_hidden=list(shape.mlp_hidden), train_metrics=False,
                               **regularization(dataset, settings))
    out = {"forward": _forward_row_seconds(model, shape, steps, generator),
           "base": _train_row_seconds(model, shape, base_batch, steps, generator)}
    names = resolve_targets(model, DEFAULT_MLP_TARGETS, "linear")
    compress_targets(model, names, None, rank=shape.mlp_rank, method="random", relu=True)
    out["mlp"] = _train_row_seconds(model, shape, mlp_batch, steps, generator)
    names = resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding")
    compress_targets(model, names, None, rank=shape.emb_rank, method="random")
    if getattr(type(model), "MLP_READS_EMBEDDINGS", False):
        fold_into_first_linear(model)
    gc.collect()
    out["emb"] = _train_row_seconds(model, shape, emb_batch, steps, generator)
    out["scratch"] = _train_row_seconds(model, shape, base_batch, steps, generator)
    del model
    gc.collect()
    return out


def run_seconds(kind: str, dataset: str, per_row: dict[str, float]) -> float:
    """One run of ``kind`` on the full ``dataset``: its epochs, statistics passes and test evaluations."""
    rows = ROWS[dataset]
    n_test = round(rows * TEST_FRACTION[dataset])
    n_train = rows - n_test
    epoch = {k: n_train * per_row[k] for k in ("base", "mlp", "emb", "scratch")}
    stats = STATS_OVER_FORWARD * n_train * per_row["forward"]
    test = n_test * per_row["forward"]
    return {
        "afm": epoch["base"] + stats + epoch["mlp"] + stats + epoch["emb"] + 6 * test,
        "svd": epoch["base"] + epoch["mlp"] + epoch["emb"] + 6 * test,
        "afm_mlp": epoch["base"] + stats + epoch["mlp"] + 4 * test,
        # Table 15 also scores every training row (eval mode) with the baseline, after the swap and after the finetune
        "afm_mlp_train": epoch["base"] + stats + epoch["mlp"] + 4 * test + 3 * n_train * per_row["forward"],
        "afm_emb": epoch["base"] + stats + epoch["emb"] + 4 * test,
        "svd_emb": epoch["base"] + epoch["emb"] + 4 * test,
        "ttd_emb": epoch["base"] + epoch["emb"] + 4 * test,
        # PQ (its k-means not timed) and QR: a table stage without statistics, counted as TT-Rec's
        "pq_emb": epoch["base"] + epoch["emb"] + 4 * test,
        "qr_emb": epoch["base"] + epoch["emb"] + 4 * test,
        "spectra": epoch["base"] + stats + test,
        "scratch": 3 * epoch["scratch"] + test,
        "scratch_1_epoch": epoch["scratch"] + test,
        # the MLP-compressed structure from scratch, 2 epochs at the baseline batch: the tables'
        # update dominates a step at full vocabularies, so counted at the baseline's speed
        "scratch_mlp": 2 * epoch["base"] + test,
    }[kind]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["criteo", "avazu"], choices=sorted(ROWS))
    parser.add_argument("--model", default="deepfm", choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per pass (median)")
    parser.add_argument("--vocab-cap", type=int, default=None,
                        help="cap every table at this many rows, where the full shapes do not fit in memory "
                             "(l2=full needs more than 14 GB at Criteo's): the per-step ratios of --settings "
                             "paper light stay meaningful, the hours understate full mode")
    parser.add_argument("--settings", nargs="+", default=["paper"], choices=["paper", "light"],
                        help="regularisation timed: paper (the data configs', full mode's) and/or light "
                             "(weight decay 0, L2 over the looked-up rows); two: side by side, with their ratio")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {args.model}; "
          f"median of {args.steps} steps after one warm-up"
          + (f"; tables capped at {args.vocab_cap:,} rows (the hours understate full mode)" if args.vocab_cap else ""))
    per_row = {}  # (settings, dataset) -> seconds per row of each pass
    for dataset in args.datasets:
        for settings in args.settings:
            started = time.perf_counter()
            per_row[settings, dataset] = measure(dataset, args.model, args.steps, settings, args.vocab_cap)
            print(f"\n{dataset}, {settings} settings {regularization(dataset, settings)} "
                  f"(measured in {time.perf_counter() - started:.0f} s), samples/s:")
            _print_speeds(dataset, per_row[settings, dataset])
    for settings in args.settings:
        print(f"\n{settings} settings:")
        _print_recipes(args.datasets, {d: per_row[settings, d] for d in args.datasets})
    if len(args.settings) == 2:
        first, second = args.settings
        print(f"\n{first} against {second}: time per row (>1: {first} is slower)")
        for dataset in args.datasets:
            ratios = {k: per_row[first, dataset][k] / per_row[second, dataset][k] for k in SPEED_LABELS}
            print(f"  {dataset}: " + ", ".join(f"{k} {r:.2f}x" for k, r in ratios.items()))


#: The timed passes (keys of :func:`measure`) in print order.
SPEED_LABELS = {"base": "baseline training", "mlp": "+AFM MLP finetune", "emb": "+AFM EMB finetune",
                "scratch": "from scratch", "forward": "forward (evaluation)"}


def _print_speeds(dataset: str, per_row: dict[str, float]) -> None:
    base, mlp, emb = BATCHES[dataset]
    batches = {"base": base, "mlp": mlp, "emb": emb, "scratch": base, "forward": EVAL_BATCH}
    for key, label in SPEED_LABELS.items():
        print(f"  {label + f', batch {batches[key]}':40s} {1 / per_row[key]:>10,.0f}")


def _print_recipes(datasets: list[str], per_dataset: dict[str, dict[str, float]]) -> None:
    """The Markdown table of each recipe's estimated hours per dataset and in total."""
    print("| recipe | runs per dataset | " + " | ".join(datasets) + " | total |")
    print("|---|---:|" + "---:|" * (len(datasets) + 1))
    for recipe, kinds in RECIPES.items():
        times = [sum(run_seconds(k, d, per_dataset[d]) for k in kinds) for d in datasets]
        print(f"| {recipe} | {len(kinds)} | " + " | ".join(_hours(t) for t in times) + f" | {_hours(sum(times))} |")


if __name__ == "__main__":
    main()
