"""The layout of Tables 7 and 8: one row per rank of one stage kind, and AUC / logloss against the rank.

Each run contributes its first stage of the swept kind (``"emb"`` for Table 7, ``"mlp"`` for
Table 8); runs at the same method and rank (seeds) are averaged. The kept variance is the share
of the output variance the kept components explain, from the statistics of the stage (per
layer for MLP stages; mean and minimum over the fields for embedding stages).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_afm.report import plots
from lightning_afm.report.common import StageRow, TableReport, baseline, group, stage_rows
from lightning_afm.report.format import (
    MISSING,
    finite,
    fmt_mean,
    fmt_params,
    fmt_ratio,
    markdown_table,
    mean_std,
    model_title,
)
from lightning_afm.report.runs import Run
from lightning_afm.report.tables.stage_table import baseline_cells

HEADERS = ["Rank", "Params", "Compression", "Kept variance", "Pre-train AUC", "Pre-train logloss",
           "Fine-tune AUC", "Fine-tune logloss"]


def swept_stages(runs: Sequence[Run], kind: str) -> list[StageRow]:
    """The first stage of ``kind`` of each run."""
    out = []
    for run in runs:
        rows = [s for s in stage_rows(run) if s.record.get("kind") == kind]
        if rows:
            out.append(rows[0])
    return out


def kept_variance(rows: Sequence[StageRow]) -> str:
    """Per layer (up to 3 layers) or ``mean (min ...)`` over many, averaged over the runs."""
    per_layer: dict[str, list[float]] = {}
    for row in rows:
        for name, layer in (row.record.get("layers") or {}).items():
            per_layer.setdefault(name, []).extend(finite([layer.get("kept_variance")]))
    means = {name: mean_std(v)[0] for name, v in per_layer.items() if v}
    if not means:
        return MISSING
    if len(means) <= 3:
        return " / ".join(f"{v:.4f}" for v in means.values())
    vals = list(means.values())
    return f"{sum(vals) / len(vals):.4f} (min {min(vals):.4f})"


def _rank_key(key: tuple[str, Any]) -> tuple[str, float]:
    method, rank = key
    return (method, float(rank) if isinstance(rank, (int, float)) else float("inf"))


def _points(rows_by_rank: dict[tuple[str, Any], list[StageRow]], attr: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for (method, rank), rows in sorted(rows_by_rank.items(), key=lambda kv: _rank_key(kv[0])):
        y = mean_std(getattr(r, attr) for r in rows)[0]
        if y is not None and isinstance(rank, (int, float)):
            xs.append(float(rank))
            ys.append(y)
    return xs, ys


def build_rank_sweep(runs: list[Run], kind: str, title: str, rank_note: str, kept_note: str,
                     what: str) -> TableReport:
    """Markdown per (dataset, model) and a figure of AUC and logloss against the rank.

    ``rank_note`` and ``kept_note`` say what the rank and the kept variance are for this ``kind``;
    the notes on the phases and the compression column, the same in both tables, are added here.
    ``what`` names the swept rank in the figure (``"embedding rank k"``).
    """
    notes = [f"{rank_note} Pre-train: right after the swap; fine-tune: after the finetune epoch. Test split.",
             kept_note, "Compression = baseline parameters / parameters of the compressed model."]
    sections: list[str] = []
    panels: list[tuple[str, dict[tuple[str, Any], list[StageRow]], dict[str, Any]]] = []
    for (data, model), members in group(runs, lambda r: (r.data, r.model)).items():
        stages = swept_stages(members, kind)
        if not stages:
            sections.append(f"## {model_title(model)} on {data}\n\nNo {kind.upper()} stage in these runs.")
            continue
        base, base_params = baseline_cells(members)
        methods = list(dict.fromkeys(s.method_title for s in stages))
        show_method = len(methods) > 1
        headers = (["Method"] if show_method else []) + HEADERS
        rows = []
        if base:
            rows.append((["Baseline"] if show_method else []) + ["baseline (" + base[0] + ")", base[1], MISSING,
                                                                   MISSING, MISSING, MISSING, base[5], base[6]])
        by_rank = group(stages, lambda s: (s.method_title, s.rank))
        for (method, rank), rs in sorted(by_rank.items(), key=lambda kv: _rank_key(kv[0])):
            params = mean_std(r.params for r in rs)[0]
            rows.append(([method] if show_method else []) + [
                str(rank), fmt_params(params), fmt_ratio(base_params, params), kept_variance(rs),
                fmt_mean([r.pre_auc for r in rs]), fmt_mean([r.pre_logloss for r in rs]),
                fmt_mean([r.auc for r in rs]), fmt_mean([r.logloss for r in rs])])
        align = ["l"] * (2 if show_method else 1) + ["r"] * (len(headers) - (2 if show_method else 1))
        sections.append(f"## {model_title(model)} on {data}\n\n" + markdown_table(headers, rows, align))
        base_runs = {r.summary.get("seed"): r for r in members}
        panels.append((f"{model_title(model)} on {data}", by_rank, {
            "auc": mean_std(baseline(r)["test_auc"] for r in base_runs.values())[0],
            "logloss": mean_std(baseline(r)["test_logloss"] for r in base_runs.values())[0]}))

    def figure(path: Path) -> None:
        fig, axes = plots.subplots(2 * len(panels), ncols=2)
        for i, (name, by_rank, base) in enumerate(panels):
            for ax, metric in zip(axes[2 * i: 2 * i + 2], ("auc", "logloss")):
                methods = list(dict.fromkeys(m for m, _ in by_rank))
                for method in methods:
                    sub = {k: v for k, v in by_rank.items() if k[0] == method}
                    label = "" if len(methods) == 1 else f"{method} "
                    xs, ys = _points(sub, metric)
                    ax.plot(xs, ys, "o-", label=f"{label}after the finetune")
                    xs, ys = _points(sub, f"pre_{metric}")
                    if xs:
                        ax.plot(xs, ys, "s--", alpha=0.7, label=f"{label}right after the swap")
                if base[metric] is not None:
                    ax.axhline(base[metric], color="grey", linestyle=":", label="baseline")
                ax.set_xlabel(what)
                ax.set_ylabel(f"test {'AUC' if metric == 'auc' else 'logloss'}")
                ax.set_title(name, fontsize=9)
                ranks = sorted({float(r) for _, r in by_rank if isinstance(r, (int, float))})
                if ranks:
                    ax.set_xticks(ranks)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
        plots.save(fig, path, title)

    return TableReport(title, sections, notes, figure if panels else None)
