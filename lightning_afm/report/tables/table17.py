"""Table 17: AFM against product quantization and the QR trick (DeepFM on Criteo in the paper).

Runs: ``compression=afm`` (ours: MLP, then the embeddings), ``pq_emb`` and ``qr_emb`` (the
embedding tables straight on the trained baseline). One row per method, scored by the run's
final test; the baseline row is the uncompressed model of the same runs. Parameters are the
final model's stored values: its parameters plus PQ's codes, one value each, the count the
paper's 102.08M for PQ needs (``conf/compression/pq_emb.yaml``). The paper's counts stand next
to ours for reference (at the paper's Criteo shape; a small run's shapes differ).
"""

from __future__ import annotations

from typing import Any

from lightning_afm.bench.shapes import TABLE_17_PARAMS_M
from lightning_afm.report.common import Context, TableReport, baseline, group
from lightning_afm.report.format import MISSING, fmt_mean, fmt_params, fmt_ratio, markdown_table, mean_std, model_title
from lightning_afm.report.runs import Run

TITLE = "Table 17: AFM against product quantization (PQ) and the QR trick"
# Override keys this table tells apart in its rows (the others must not vary: see
# common.check_nothing_hidden_is_averaged).
SHOWN = ("compression",)

#: Row titles by the methods of a run's stages, in the paper's order.
TITLES = {("pq",): "PQ", ("qr",): "QR", ("afm", "afm"): "Ours (AFM MLP + EMB)"}
ORDER = ("Baseline", "PQ", "QR", "Ours (AFM MLP + EMB)")
_PAPER_KEY = {"Baseline": "baseline", "PQ": "pq", "QR": "qr", "Ours (AFM MLP + EMB)": "afm"}


def method(run: Run) -> str:
    """The row a run belongs to: its stages' methods (``"PQ"``...), or the methods themselves when unknown."""
    methods = tuple(str(s.get("method")) for s in run.stages)
    return TITLES.get(methods, " + ".join(m.upper() for m in methods) or "Baseline only")


def stored_values(run: Run) -> Any:
    """The final model's stored values: the last stage's ``stored_values`` (PQ's codes counted), else ``params``."""
    stages = run.stages
    if stages and stages[-1].get("stored_values") is not None:
        return stages[-1]["stored_values"]
    return run.summary.get("params")


def build(runs: list[Run], context: Context) -> TableReport:
    sections = []
    for (data, model), members in group(runs, lambda r: (r.data, r.model)).items():
        # every run trains the same baseline epoch: one baseline per seed, as table 14
        bases = {r.summary.get("seed"): baseline(r) for r in members if r.stages and baseline(r)["test_auc"] is not None}
        figures: dict[str, list[dict[str, Any]]] = {}
        if bases:
            figures["Baseline"] = [{"params": b["params"], "auc": b["test_auc"], "logloss": b["test_logloss"]}
                                   for b in bases.values()]
        for run in members:
            figures.setdefault(method(run), []).append({"params": stored_values(run),
                                                        "auc": run.summary.get("test_auc"),
                                                        "logloss": run.summary.get("test_logloss")})
        base_params = mean_std(f["params"] for f in figures.get("Baseline", []))[0]
        rows = []
        for title in sorted(figures, key=lambda t: (ORDER.index(t) if t in ORDER else len(ORDER), t)):
            fs = figures[title]
            params = mean_std(f["params"] for f in fs)[0]
            paper = TABLE_17_PARAMS_M.get(_PAPER_KEY.get(title, ""))
            rows.append([title, fmt_params(params), fmt_ratio(base_params, params),
                         fmt_mean([f["auc"] for f in fs]), fmt_mean([f["logloss"] for f in fs]),
                         MISSING if paper is None else f"{paper:.2f}M"])
        headers = ["Method", "Params", "Compression", "Test AUC", "Test logloss", "Paper's params (Criteo)"]
        sections.append(f"## {model_title(model)} on {data}\n\n" + markdown_table(headers, rows))
    notes = [
        "Test AUC / logloss of each run's final model; Baseline: the uncompressed model of the same runs, "
        "before their first stage.",
        "PQ (compression=pq_emb): k-means product quantization of the trained tables (D codes per row, K "
        "centroids per sub-space, Jegou et al.), the codebooks finetuned with the codes fixed. QR "
        "(compression=qr_emb): quotient-remainder tables (Shi et al.), trained from a random start. Both "
        "leave the LR tables and the MLP as they are; ours compresses the MLP and the tables (compression=afm).",
        "Params: the final model's stored values, PQ's codes counted one value each (the paper's count needs "
        "them). Compression = baseline / params. The paper's column: its counts at the full Criteo shape "
        "(UMEC's row, 131.09M, is not implemented here); benchmarks/param_counts.py gives ours at that shape.",
    ]
    return TableReport(TITLE, sections, notes)
