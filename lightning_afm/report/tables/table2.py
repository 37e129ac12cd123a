"""Table 2: the seven models, baseline / +AFM MLP / +AFM EMB: AUC, logloss, parameters, throughput.

One ``compression=afm`` run per model and dataset gives all three rows (the baseline figures,
then each stage after its finetune). Throughput comes from ``lightning-afm-bench``'s
``bench.json`` when the recipe ran it: rows ``{model, dataset, variant, params, samples_per_s,
gain_pct}`` merged on model and variant (``baseline``, ``afm_mlp``, ``afm_emb``), for the
bench dataset of the runs' data (Criteo runs with the bench's Criteo shape), or for the one
bench dataset when the runs used other data (the built-in synthetic data): the header then
says which shape was timed, since it is not the shape of the trained models.
"""

from __future__ import annotations

from typing import Any

from lightning_afm.report.bench_columns import bench_columns
from lightning_afm.report.common import Context, TableReport, baseline, group, ordered
from lightning_afm.report.format import (
    MISSING,
    fmt_mean,
    fmt_params,
    fmt_ratio,
    fmt_signed,
    markdown_table,
    mean_std,
    model_title,
)
from lightning_afm.report.runs import Run

TITLE = "Table 2: seven models with AFM: AUC, logloss, parameters and throughput"
# Override keys this table tells apart in its rows (the others must not vary: see
# common.check_nothing_hidden_is_averaged).
SHOWN = ("compression",)
PAPER_MODEL_ORDER = ("dcn", "deepfm", "nfm", "autoint", "fibinet", "dcnv2", "gdcn")
VARIANTS = (("baseline", "Baseline"), ("afm_mlp", "+AFM MLP"), ("afm_emb", "+AFM EMB"))


def _figures(run: Run, variant: str) -> dict[str, Any] | None:
    """AUC / logloss / params of one variant in one run (None when the run lacks that stage)."""
    if variant == "baseline":
        b = baseline(run)
        return {"auc": b["test_auc"], "logloss": b["test_logloss"], "params": b["params"]}
    kind = variant.split("_", 1)[1]
    for st in run.stages:
        if st.get("kind") == kind and st.get("method") == "afm":
            return {"auc": st.get("test_auc"), "logloss": st.get("test_logloss"), "params": st.get("params")}
    return None


def build(runs: list[Run], context: Context) -> TableReport:
    sections: list[str] = []
    notes = [
        "AUC and logloss on the test split after each stage's finetune; +AFM EMB is cumulative (the +AFM MLP "
        "model with AFM on every table), as in the paper. ΔAUC is against the same run's baseline.",
        "Compression = baseline parameters / parameters.",
    ]
    for data, data_runs in group(runs, lambda r: r.data).items():
        bench = bench_columns(data, context, notes)
        headers = ["Model", "Variant", "Test AUC", "ΔAUC", "Test logloss", "Params", "Compression"]
        if bench is not None:
            headers += bench.headers
        rows = []
        by_model = group(data_runs, lambda r: r.model)
        for model in ordered(list(by_model), PAPER_MODEL_ORDER):
            model_runs = by_model[model]
            base_params = mean_std(baseline(r)["params"] for r in model_runs)[0]
            first = True
            for variant, title in VARIANTS:
                pairs = [(f, baseline(r)["test_auc"]) for r in model_runs if (f := _figures(r, variant)) is not None]
                if not pairs:
                    continue
                figs = [f for f, _ in pairs]
                params = mean_std(f["params"] for f in figs)[0]
                delta = MISSING
                if variant != "baseline":
                    delta = fmt_signed(mean_std(f["auc"] - b for f, b in pairs
                                                if f["auc"] is not None and b is not None)[0])
                row = [model_title(model) if first else "", title, fmt_mean([f["auc"] for f in figs]), delta,
                       fmt_mean([f["logloss"] for f in figs]), fmt_params(params),
                       MISSING if variant == "baseline" else fmt_ratio(base_params, params)]
                if bench is not None:
                    row += bench.cells(model, variant)
                rows.append(row)
                first = False
        sections.append(f"## {data}\n\n" + markdown_table(headers, rows, ["l", "l"] + ["r"] * (len(headers) - 2)))
    return TableReport(TITLE, sections, notes)
