"""Table 13: several seeds: mean and standard deviation of the test AUC and logloss per variant.

Runs: ``compression=afm data.split_seed=0,1,2,3,4``: the paper divides the data with 5 seeds
(line 1202-1203) and keeps the model's seed at 0 (line 1098-1099). Runs that sweep the model's
``seed`` instead (initialisation and batch order, same split) are read the same way; the table
says which seed varied. The standard deviation is the sample one (``ddof=1``) over the seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_afm.report import plots
from lightning_afm.report.common import Context, TableReport, baseline, group, stage_rows
from lightning_afm.report.format import finite, fmt_mean_std, fmt_params, markdown_table, mean_std, model_title
from lightning_afm.report.runs import Run

TITLE = "Table 13: mean and standard deviation over seeds"
# Override keys this table tells apart in its rows (the others must not vary: see
# common.check_nothing_hidden_is_averaged).
SHOWN = ("compression",)


def variants(run: Run) -> list[tuple[str, dict[str, Any]]]:
    """``[("Baseline", figures), ("+AFM MLP", figures), ...]`` of one run (test split)."""
    b = baseline(run)
    out = []
    if b["test_auc"] is not None:
        out.append(("Baseline", {"auc": b["test_auc"], "logloss": b["test_logloss"], "params": b["params"]}))
    for row in stage_rows(run):
        kind = str(row.record.get("kind", "?")).upper()
        out.append((f"+{row.method_title} {kind}", {"auc": row.auc, "logloss": row.logloss, "params": row.params}))
    if not run.stages:
        out = [("Baseline", {"auc": run.summary.get("test_auc"), "logloss": run.summary.get("test_logloss"),
                             "params": run.summary.get("params")})]
    return out


def seed_of(run: Run) -> tuple[Any, Any]:
    """``(split seed, model seed)`` of a run: ``data.split_seed`` (else ``data.seed``) from its config,
    ``seed`` from its summary."""
    split = run.value("data.split_seed")
    return (run.value("data.seed") if split is None else split), run.summary.get("seed")


def _seed_label(members: list[Run]) -> tuple[str, int]:
    """Which seed the runs differ in: ``("split", 0)`` (the paper's) or ``("model", 1)``."""
    splits = {seed_of(r)[0] for r in members}
    return ("split", 0) if len(splits) > 1 else ("model", 1)


def build(runs: list[Run], context: Context) -> TableReport:
    sections: list[str] = []
    panels: list[tuple[str, dict[str, list[tuple[Any, dict[str, Any]]]]]] = []
    for (data, model), members in group(runs, lambda r: (r.data, r.model)).items():
        by_variant: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
        which, index = _seed_label(members)
        for run in members:
            for name, figs in variants(run):
                by_variant.setdefault(name, []).append((seed_of(run)[index], figs))
        rows = []
        for name, seeded in by_variant.items():
            aucs = [f["auc"] for _, f in seeded]
            seeds = ", ".join(str(s) for s, _ in seeded)
            per_seed = ", ".join(f"{v:.4f}" for v in finite(aucs))
            rows.append([name, f"{len(seeded)} ({seeds})", fmt_mean_std(aucs), fmt_mean_std([f["logloss"] for _, f in seeded]),
                         fmt_params(mean_std(f["params"] for _, f in seeded)[0]), per_seed])
        headers = ["Variant", f"Seeds ({which})", "Test AUC (mean ± std)", "Test logloss (mean ± std)", "Params",
                   "Test AUC per seed"]
        sections.append(f"## {model_title(model)} on {data}\n\n" + markdown_table(headers, rows))
        panels.append((f"{model_title(model)} on {data}", by_variant))
    notes = ["Mean ± sample standard deviation (ddof = 1) over the seeds. Seeds (split): data.split_seed, the "
             "division of the data into train, validation and test, as the paper's (line 1202-1203), with the "
             "model's seed fixed; seeds (model): the model's initialisation and batch order on one split. +AFM EMB "
             "is cumulative (after +AFM MLP)."]

    def figure(path: Path) -> None:
        fig, axes = plots.subplots(len(panels), ncols=2, width=5.0)
        for ax, (name, by_variant) in zip(axes, panels):
            for x, (variant, seeded) in enumerate(by_variant.items()):
                aucs = finite(f["auc"] for _, f in seeded)
                ax.scatter([x] * len(aucs), aucs, alpha=0.6, s=18)
                mean, std, n = mean_std(aucs)
                if mean is not None:
                    ax.errorbar([x + 0.15], [mean], yerr=[std or 0.0], fmt="D", color="black", capsize=4)
            ax.set_xticks(range(len(by_variant)))
            ax.set_xticklabels(list(by_variant), fontsize=8)
            ax.set_ylabel("test AUC")
            ax.set_title(f"{name} (dots: seeds; diamond: mean ± std)", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
        plots.save(fig, path, TITLE)

    return TableReport(TITLE, sections, notes, figure if panels else None)
