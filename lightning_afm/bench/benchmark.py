"""The benchmark loop: for each dataset and model, build the variants, time them side by side, make rows.

Our variants are timed in their inference form (:func:`lightning_afm.inference.optimize_for_inference`),
as a serving process would run them; parameters are counted on the models themselves.

One model at a time: its variants live together while they are timed (those that keep a
baseline parameter share its storage, see :mod:`.variants`) and are freed before the next
model is built, so the peak memory is about one full-size model (Criteo: 574M parameters,
2.3 GB) plus what the variants change.
"""

from __future__ import annotations

import gc
import logging
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_afm.bench.runtimes import RuntimeUnavailable, check_runtime, prepare
from lightning_afm.bench.selection import DEFAULT_CANDIDATES, check_candidates, choose_runtime, tensor_gb
from lightning_afm.bench.deepctr import DEEPCTR_MODELS, build_deepctr_model, deepctr_input, deepctr_unavailable
from lightning_afm.bench.shapes import PAPER_AFM_EMB_GAIN_PCT, PAPER_SHAPES, PaperShape, paper_shape
from lightning_afm.bench.throughput import (
    InferenceBatch,
    Timed,
    make_batches,
    matmul_multiply_adds,
    summarize,
    time_interleaved,
)
from lightning_afm.bench.variants import VARIANTS, VariantOptions, VariantSettings, build_twin, build_variant
from lightning_afm.inference import optimize_for_inference
from lightning_afm.models import MODELS, count_parameters
from lightning_afm.runtime import reuse_freed_memory

__all__ = ["BenchSettings", "check_selection", "run_benchmark", "bench_model", "peak_rss_gb"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchSettings(VariantOptions):
    """What to measure and how (the fields of ``conf/bench.yaml`` but ``out``).

    The structures' options (``tt_rank``, ``tt_min_rows``, ``tt_lr``, ``afm_relu``, ``svd_relu``,
    ``fold``) are the fields of :class:`~lightning_afm.bench.variants.VariantOptions`, inherited,
    so the config keeps them flat (``lightning-afm-bench tt_rank=8 fold=false``).

    ``mlp_rank`` / ``emb_rank``: None takes the paper's for each dataset (Criteo 64 / 2,
    Avazu 320 / 8). ``threads``: None keeps torch's default. ``vocab_cap``: None builds the
    full vocabularies (Table 2's parameter counts); a number caps every table for quick runs.
    ``runtime``: what runs our variants' inference form (:data:`~lightning_afm.bench.runtimes.RUNTIMES`),
    or ``"best"``: per variant, the fastest of ``best_of`` on the bench's batches, timed side by side
    for ``select_rounds`` rounds before the timed rounds (:mod:`~lightning_afm.bench.selection`),
    the exporting runtimes left out for a model holding more than ``export_limit_gb`` (None: no limit).
    DeepCTR-Torch's models always run eagerly, as that library serves them.
    ``reuse_freed_memory``: keep freed blocks in the heap
    (:func:`lightning_afm.runtime.reuse_freed_memory`, as a fit does), as a warmed-up
    serving process would: otherwise glibc unmaps every large activation on free and the next
    forward page-faults it in again, a cost of the allocator rather than of the model.
    """

    models: list[str] = field(default_factory=lambda: list(MODELS))
    datasets: list[str] = field(default_factory=lambda: list(PAPER_SHAPES))
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    batch: int = 10000
    rounds: int = 5
    batches_per_round: int = 2
    warmup: int = 1
    threads: int | None = None
    seed: int = 0
    vocab_cap: int | None = None
    zipf_exponent: float = 1.0
    mlp_rank: int | None = None
    emb_rank: int | None = None
    share_weights: bool = True
    reuse_freed_memory: bool = True
    runtime: str = "best"
    best_of: list[str] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    select_rounds: int = 3
    export_limit_gb: float | None = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        # frozen: the normalised selections are set as a dataclass's own __init__ sets fields
        object.__setattr__(self, "models", check_selection("model", self.models, list(MODELS)))
        object.__setattr__(self, "datasets", check_selection("dataset", self.datasets, list(PAPER_SHAPES)))
        object.__setattr__(self, "variants", check_selection("variant", self.variants, list(VARIANTS)))
        if "baseline" not in self.variants:  # every gain is relative to it
            self.variants.insert(0, "baseline")
        for name in ("batch", "rounds", "batches_per_round", "select_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be a non-negative integer, got {self.warmup!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or null (torch's default), got {self.threads!r}")
        if not float(self.zipf_exponent) > 0:
            raise ValueError(f"zipf_exponent must be > 0, got {self.zipf_exponent!r}")
        paper_shape(self.datasets[0], self.vocab_cap)  # validates vocab_cap
        runtime = str(self.runtime).lower()
        object.__setattr__(self, "runtime", runtime if runtime == "best" else _check_runtime_or_best(runtime))
        object.__setattr__(self, "best_of", check_candidates(self.best_of))
        if self.export_limit_gb is not None and not float(self.export_limit_gb) > 0:
            raise ValueError(f"export_limit_gb must be > 0 or null (no limit), got {self.export_limit_gb!r}")

    def variant_settings(self, shape: PaperShape) -> VariantSettings:
        return VariantSettings(
            mlp_rank=self.mlp_rank if self.mlp_rank is not None else shape.mlp_rank,
            emb_rank=self.emb_rank if self.emb_rank is not None else shape.emb_rank,
            **self.variant_options(),
        )


def _check_runtime_or_best(runtime: str) -> str:
    try:
        return check_runtime(runtime)
    except ValueError as err:
        raise ValueError(f"{err} or 'best' (the fastest of best_of, per variant)") from None


def check_selection(kind: str, chosen: Sequence[str] | str, valid: Sequence[str]) -> list[str]:
    """``chosen`` lower-cased, duplicates dropped; ValueError naming the unknown ones and the valid ones."""
    if isinstance(chosen, str):
        chosen = [chosen]
    picked = [str(c).lower() for c in chosen]
    unknown = [c for c in picked if c not in valid]
    if unknown:
        raise ValueError(f"unknown {kind}{'s' if len(unknown) > 1 else ''} {unknown}; valid {kind}s: {list(valid)}")
    if not picked:
        raise ValueError(f"no {kind} selected; choose from {list(valid)}")
    return list(dict.fromkeys(picked))


def peak_rss_gb() -> float:
    """The process's peak resident memory so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _variant_details(variant: str, model_name: str, vs: VariantSettings) -> dict[str, Any]:
    if variant in ("afm_mlp", "svd_mlp"):
        return {"ranks": {"mlp": vs.mlp_rank}}
    if variant in ("afm_emb", "svd_emb"):
        return {"ranks": {"mlp": vs.mlp_rank, "emb": vs.emb_rank},
                "folded": bool(vs.fold and MODELS[model_name].MLP_READS_EMBEDDINGS)}
    if variant == "ttd_emb":
        return {"ranks": {"tt": vs.tt_rank}, "tt_min_rows": vs.tt_min_rows, "tt_lr": vs.tt_lr}
    return {}


def bench_model(
    model_name: str,
    shape: PaperShape,
    settings: BenchSettings,
    batches: list[InferenceBatch],
) -> list[dict[str, Any]]:
    """Build ``settings.variants`` of one model at ``shape``, time them interleaved, return one row each."""
    vs = settings.variant_settings(shape)
    models: dict[str, nn.Module] = {}
    runners: dict[str, Timed] = {}
    counted: dict[str, Timed] = {}  # eager forms, for the multiply-add count whatever the runtime
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}  # what the runtime ran instead of the inference form, and why
    runtimes: dict[str, str] = {}  # what ran each timed variant
    selections: dict[str, dict[str, Any]] = {}  # runtime=best: what each candidate did
    held_gb: float | None = None  # runtime=best: the baseline's size, for every variant's export limit
    started = time.perf_counter()
    twin = build_twin(model_name, shape)
    baseline = build_variant(model_name, shape, "baseline", vs, twin)
    shared = dict(baseline.named_parameters()) if settings.share_weights else None
    for variant in settings.variants:
        if variant == "deepctr_torch":
            reason = deepctr_unavailable()
            if reason is None and model_name not in DEEPCTR_MODELS:
                reason = f"DeepCTR-Torch has no {model_name} (it implements {sorted(DEEPCTR_MODELS)})"
            if reason is not None:
                skipped[variant] = reason
                continue
            model = build_deepctr_model(
                model_name, shape, tables_from=baseline if settings.share_weights else None, seed=settings.seed
            )
            inputs = [deepctr_input(b.categorical, b.numeric) for b in batches]
            runners[variant] = counted[variant] = Timed(model, inputs)
            runtimes[variant] = "eager"
        else:
            model = baseline if variant == "baseline" else build_variant(model_name, shape, variant, vs, twin, shared)
            # timed in its inference form, as served: shared storage except the fused table (a copy of
            # the embedding and LR tables: one gather per batch), on the runtime
            fast = optimize_for_inference(model, fuse=True)
            counted[variant] = prepare(fast, "eager", batches).timed
            if held_gb is None:  # the baseline comes first
                held_gb = tensor_gb(fast)
            try:
                if settings.runtime == "best":
                    choice = choose_runtime(fast, batches, settings.best_of, settings.select_rounds, model,
                                            export_limit_gb=settings.export_limit_gb, held_gb=held_gb)
                    prepared, runtimes[variant], selections[variant] = choice.prepared, choice.runtime, choice.record()
                    log.info("%s/%s/%s: runtime %s (samples/s %s)", shape.dataset, model_name, variant,
                             choice.runtime, {k: round(v) for k, v in choice.samples_per_s.items()})
                else:
                    runtimes[variant] = settings.runtime  # also on a refusal: the row says which runtime refused
                    prepared = prepare(fast, settings.runtime, batches, export_fallback=model)
            except RuntimeUnavailable as err:
                skipped[variant] = str(err)
                continue
            runners[variant] = prepared.timed
            if prepared.note:
                notes[variant] = prepared.note
        models[variant] = model
    log.info(
        "%s/%s: built %s in %.1f s (peak RSS %.2f GB)", shape.dataset, model_name, list(models),
        time.perf_counter() - started, peak_rss_gb(),
    )
    del twin, shared

    times = time_interleaved(
        runners, settings.rounds, settings.warmup,
        on_round=lambda r: log.info("%s/%s: round %d/%d done", shape.dataset, model_name, r + 1, settings.rounds),
    )
    results = {name: summarize(t, settings.batch) for name, t in times.items()}
    # no gain where the runtime could not run the baseline (its row says why)
    base_sps = results["baseline"].samples_per_s if "baseline" in results else None
    # per row of the first batch; fixed per-call work (a fold's weights) is spread over the batch
    macs = {name: matmul_multiply_adds(runner) / len(batches[0].categorical) for name, runner in counted.items()}

    rows = []
    for variant in settings.variants:
        row: dict[str, Any] = {"model": model_name, "dataset": shape.dataset, "variant": variant,
                               "runtime": runtimes.get(variant), "runtime_selection": selections.get(variant)}
        if variant in skipped:
            row.update(params=None, samples_per_s=None, gain_pct=None, skipped=skipped[variant])
            rows.append(row)
            continue
        res = results[variant]
        row.update(
            params=count_parameters(models[variant]),
            samples_per_s=res.samples_per_s,
            gain_pct=100.0 * (res.samples_per_s / base_sps - 1.0) if base_sps else None,
            median_batch_s=res.median_batch_s,
            iqr_pct=res.iqr_pct,
            timed_batches=res.timed_batches,
            macs_per_row=macs[variant],
            macs_bound_gain_pct=(
                100.0 * (macs["baseline"] / macs[variant] - 1.0) if macs[variant] and "baseline" in macs else None
            ),
            skipped=None,
            runtime_note=notes.get(variant),
            **_variant_details(variant, model_name, vs),
        )
        if variant == "afm_emb":
            paper = PAPER_AFM_EMB_GAIN_PCT[shape.dataset][model_name]
            row.update(paper_gain_pct=paper,
                       meets_paper=None if row["gain_pct"] is None else bool(row["gain_pct"] >= paper))
        if variant == "deepctr_torch":
            row["baseline_over_deepctr"] = base_sps / res.samples_per_s if base_sps else None
        rows.append(row)
    del models, runners, counted, baseline
    gc.collect()
    return rows


def run_benchmark(settings: BenchSettings) -> list[dict[str, Any]]:
    """Every selected dataset x model x variant; rows as :func:`bench_model` makes them, with the settings.

    ``settings.threads`` applies for the run only: torch's thread count is restored afterwards.
    """
    threads_before = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        heap_reuse = reuse_freed_memory() if settings.reuse_freed_memory else False
        common = {
            "batch": settings.batch,
            "threads": torch.get_num_threads(),
            "runtime_setting": settings.runtime,
            "vocab_cap": settings.vocab_cap,
            "zipf_exponent": float(settings.zipf_exponent),
            "rounds": settings.rounds,
            "batches_per_round": settings.batches_per_round,
            "seed": settings.seed,
            "reuse_freed_memory": heap_reuse,
            "torch": torch.__version__,
        }
        rows: list[dict[str, Any]] = []
        for dataset in settings.datasets:
            shape = paper_shape(dataset, settings.vocab_cap)
            batches = make_batches(
                shape, settings.batch, settings.batches_per_round, settings.seed, settings.zipf_exponent
            )
            for model_name in settings.models:
                rows.extend({**row, **common} for row in bench_model(model_name, shape, settings, batches))
        return rows
    finally:
        torch.set_num_threads(threads_before)


def settings_dict(settings: BenchSettings) -> dict[str, Any]:
    """The settings as plain JSON values (recorded with the results)."""
    return asdict(settings)
