"""Pareto: test AUC against parameters and CPU latency, uniform ranks against budgeted (auto) ranks.

Runs: ``recipes/pareto.sh``: per budget (x fewer parameters than the baseline) one uniform
``compression=afm`` run at the rank pair nearest that count
(:mod:`lightning_afm.report.pareto_ranks`) and one ``compression=afm_auto`` run at
``compression.budget.ratio``, each over several seeds; both carry ``+pareto_ratio=R`` so that
the table can put them side by side. Plain runs (``compression=none``) give the baseline row;
compressed runs give it too (their ``baseline_*`` figures) when there is none.

One row per (structure, budget): test AUC mean ± std over the seeds, the difference to the
baseline's mean, parameters, and the median forward time of a 10,000-row batch where the
recipe measured it (``latency.json`` in the run directory,
:mod:`lightning_afm.report.pareto_latency`). Runs that differ in anything else (a learning rate,
the data) are refused, as by every table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_afm.report import plots
from lightning_afm.report.common import Context, TableReport, baseline, group
from lightning_afm.report.format import (
    MISSING, finite, fmt_mean_std, fmt_params, fmt_signed, markdown_table, mean_std, model_title,
)
from lightning_afm.report.runs import Run

TITLE = "Pareto: test AUC against parameters and latency, uniform against budgeted ranks"
# Override keys told apart in the rows. baseline: the per-seed checkpoint the recipe compresses
# (baseline=PATH), which varies with the seed exactly as the seed does; emb.grow_rank=false holds
# a uniform run at its rank pair; save_checkpoint: the baselines keep theirs.
SHOWN = ("compression", "compression.mlp.rank", "compression.emb.rank", "compression.budget.ratio",
         "compression.budget.params", "compression.budget.bytes", "compression.budget.kept_variance",
         "compression.emb.grow_rank", "pareto_ratio", "baseline", "save_checkpoint", "hydra.sweep.subdir")
#: The batch whose latency the table reports (the issue's "measured CPU latency at batch 10,000").
LATENCY_BATCH = 10_000
LATENCY_FILE = "latency.json"
STRUCTURES = ("baseline", "uniform", "auto")


def structure(run: Run) -> str:
    """``"auto"`` (a budget chose the ranks), ``"uniform"`` (fixed ranks) or ``"baseline"`` (no stages)."""
    if not run.stages:
        return "baseline"
    return "auto" if run.summary.get("budget") or run.value("compression.mlp.rank") == "auto" else "uniform"


def budget_label(run: Run) -> str:
    """``"5x"`` from ``pareto_ratio`` (else the auto budget's own setting); ``"-"`` for the baseline."""
    ratio = run.value("pareto_ratio")
    if ratio is not None:
        return f"{float(ratio):g}x"
    if structure(run) == "auto":
        block = run.value("compression.budget") or {}
        for key in ("ratio", "params", "bytes", "kept_variance"):
            if block.get(key) is not None:
                return f"{float(block[key]):g}x" if key == "ratio" else f"{key} {block[key]}"
    return MISSING


def ranks_label(run: Run) -> str:
    """``"MLP 64, emb 2"`` for uniform runs; for auto runs the chosen range (``"MLP 8-16, emb 1-9"``),
    with the targets the budget left dense as ``dense`` (``"MLP 8-dense"``)."""
    if structure(run) == "uniform":
        ranks = {st.get("kind"): st.get("rank") for st in run.stages}
        return f"MLP {ranks.get('mlp', MISSING)}, emb {ranks.get('emb', MISSING)}"
    block = run.summary.get("budget") or {}
    chosen = dict(block.get("ranks") or {})
    dense = list(block.get("dense") or [])
    if not chosen and not dense:
        return MISSING
    tables = [r for n, r in chosen.items() if _is_table(n)]
    linears = [r for n, r in chosen.items() if not _is_table(n)]

    def span(values: list[int], any_dense: bool) -> str:
        if not values:
            return "dense" if any_dense else MISSING
        low, high = min(values), ("dense" if any_dense else max(values))  # dense: above every rank
        return f"{low}" if low == high else f"{low}-{high}"
    mlp_dense = any(not _is_table(n) for n in dense)
    return f"MLP {span(linears, mlp_dense)}, emb {span(tables, any(_is_table(n) for n in dense))}"


def _is_table(target: str) -> bool:
    """A field table's target name (``embeddings.C1``) rather than an MLP Linear's (``mlp.1.linear``)."""
    return "embedding" in target


def latency_ms(run: Run) -> float | None:
    """The run's measured median forward time (ms) of a :data:`LATENCY_BATCH`-row batch, if recorded."""
    path = Path(run.path) / LATENCY_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); measure again with "
                         "python -m lightning_afm.report.pareto_latency") from None
    if int(record.get("batch", -1)) != LATENCY_BATCH:
        return None
    return record.get("median_ms")


@dataclass
class _Row:
    structure: str
    budget: str
    aucs: list[float] = field(default_factory=list)
    params: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    ranks: list[str] = field(default_factory=list)


def _add(rows: dict[tuple[str, str, str], _Row], key: tuple[str, str, str], run: Run, auc: Any, params: Any,
         latency: Any, ranks: str) -> None:
    row = rows.setdefault(key, _Row(key[0], key[1]))
    row.aucs += finite([auc])
    row.params += finite([params])
    row.latencies += finite([latency])
    row.seeds.append(run.summary.get("seed"))
    if ranks not in row.ranks:
        row.ranks.append(ranks)


def collect(members: list[Run]) -> list[_Row]:
    """The rows of one (data, model): the baseline first, then by budget, uniform before auto."""
    rows: dict[tuple[str, str, str], _Row] = {}
    plain = [r for r in members if not r.stages]
    for run in plain:
        _add(rows, ("baseline", MISSING, ""), run, run.summary.get("test_auc"), run.summary.get("params"),
             latency_ms(run), "full")
    if not plain:  # the compressed runs' own baseline figures, once per seed
        for run in {r.summary.get("seed"): r for r in members}.values():
            b = baseline(run)
            _add(rows, ("baseline", MISSING, ""), run, b["test_auc"], b["params"], None, "full")
    for run in members:
        kind = structure(run)
        if kind == "baseline":
            continue
        # uniform runs of one budget but different rank pairs are different rows, never averaged
        key = (kind, budget_label(run), ranks_label(run) if kind == "uniform" else "")
        _add(rows, key, run, run.summary.get("test_auc"), run.summary.get("params"), latency_ms(run),
             ranks_label(run))

    def order(row: _Row) -> tuple[int, float, int]:
        ratio = float(row.budget[:-1]) if row.budget.endswith("x") else float("inf")
        return (0 if row.structure == "baseline" else 1, ratio, STRUCTURES.index(row.structure))
    return sorted(rows.values(), key=order)


def build(runs: list[Run], context: Context) -> TableReport:
    sections: list[str] = []
    panels: list[tuple[str, list[_Row]]] = []
    for (data, model), members in group(runs, lambda r: (r.data, r.model)).items():
        rows = collect(members)
        base = mean_std(rows[0].aucs)[0] if rows and rows[0].structure == "baseline" else None
        base_params = mean_std(rows[0].params)[0] if base is not None else None
        table = []
        for row in rows:
            mean_auc, _, _ = mean_std(row.aucs)
            params = mean_std(row.params)[0]
            fewer = f"{base_params / params:.2f}x" if base_params and params else MISSING
            delta = fmt_signed(mean_auc - base) if base is not None and mean_auc is not None and \
                row.structure != "baseline" else MISSING
            lat = fmt_mean_std(row.latencies, 1)
            table.append([row.structure, row.budget, "; ".join(row.ranks), fmt_params(params), fewer,
                          len(row.seeds), fmt_mean_std(row.aucs), delta, lat])
        headers = ["Structure", "Budget", "Ranks", "Params", "x fewer", "Seeds", "Test AUC (mean ± std)",
                   "vs baseline", f"Latency ms @ {LATENCY_BATCH:,} (mean ± std)"]
        sections.append(f"## {model_title(model)} on {data}\n\n" + markdown_table(headers, table))
        panels.append((f"{model_title(model)} on {data}", rows))
    notes = [
        "Budget: x fewer parameters than the baseline. uniform: compression=afm at the (MLP, embedding) rank pair "
        "nearest that count from below (python -m lightning_afm.report.pareto_ranks); auto: compression=afm_auto "
        "with compression.budget.ratio, ranks chosen per MLP layer and per field. Ranks: the uniform pair, or the "
        "range the budget chose.",
        "Mean ± sample standard deviation (ddof = 1) over the seeds; vs baseline: the mean's difference to the "
        "baseline's mean test AUC.",
        f"Latency: median forward time of one {LATENCY_BATCH:,}-row batch on this machine's CPU, all models timed "
        "interleaved in one process (python -m lightning_afm.report.pareto_latency); '-' where not measured.",
    ]

    def figure(path: Path) -> None:
        _draw(panels, path)

    return TableReport(TITLE, sections, notes, figure if panels else None)


def _draw(panels: list[tuple[str, list[_Row]]], path: Path) -> None:
    """Per (data, model): test AUC against parameters, and against latency where measured."""
    fig, axes = plots.subplots(2 * len(panels), ncols=2, width=5.0, height=3.6)
    for i, (name, rows) in enumerate(panels):
        for ax, xkey, xlabel in ((axes[2 * i], "params", "parameters"),
                                 (axes[2 * i + 1], "latencies", f"CPU latency at batch {LATENCY_BATCH:,} (ms)")):
            for kind, marker in (("uniform", "o-"), ("auto", "s-")):
                points = [(mean_std(getattr(r, xkey))[0], *mean_std(r.aucs)[:2]) for r in rows
                          if r.structure == kind]
                points = sorted(p for p in points if p[0] is not None and p[1] is not None)
                if points:
                    ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] or 0.0 for p in points],
                                fmt=marker, capsize=3, label=f"{kind} ranks")
            base = [r for r in rows if r.structure == "baseline"]
            if base and mean_std(base[0].aucs)[0] is not None:
                ax.axhline(mean_std(base[0].aucs)[0], color="grey", linestyle="--", label="baseline")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test AUC")
            ax.set_title(name, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    plots.save(fig, path, TITLE)
