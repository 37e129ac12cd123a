"""Table 4: AFM against SVD and TTD (DeepFM in the paper), pre-train and fine-tune AUC and logloss, per stage.

Runs: ``compression=afm`` and ``svd`` (MLP stage, then the embedding stage after it), and
``ttd_emb`` / ``ttd_svd_emb`` / ``afm_emb`` / ``svd_emb`` (the embedding stage straight on the
baseline, so TTD has AFM and SVD rows to compare with on equal terms). TTD's two
initialisations are rows of their own: random cores as TT-Rec's (the paper's TTD, line 737-738)
and TT-SVD of the trained tables (ours).

Throughput (the paper's last column) comes from ``lightning-afm-bench``'s ``bench.json`` when
the recipe ran it, merged as in Table 2 (:mod:`lightning_afm.report.bench_columns`): each row
maps to the bench variant of the same structure (:func:`bench_variant`).
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning_afm.report.bench_columns import bench_columns
from lightning_afm.report.common import Context, StageRow, TableReport, group
from lightning_afm.report.format import model_title
from lightning_afm.report.runs import Run
from lightning_afm.report.tables.stage_table import stage_table

TITLE = "Table 4: AFM, SVD and TTD, before and after finetuning"
# Override keys this table tells apart in its rows (the others must not vary: see
# common.check_nothing_hidden_is_averaged): the compression config, and TTD's initialisation.
# ttd_min_rows: set on the TTD runs only (recipes/table4.sh small), whose rows the method already
# tells apart.
SHOWN = ("compression", "compression.emb.ttd_init", "compression.emb.ttd_min_rows")

#: Row titles of TTD by ``compression.emb.ttd_init``; a run whose config lacks it is plain "TTD".
TTD_TITLES = {"random": "TTD (random init, TT-Rec)", "svd": "TTD (TT-SVD init)"}
ORDER = ("AFM", "SVD", *TTD_TITLES.values(), "TTD")


def variant_title(row: StageRow) -> str:
    """The method's title; TTD's says how its cores started (the two are different baselines)."""
    if row.method == "ttd":
        return TTD_TITLES.get(str(row.run.value("compression.emb.ttd_init")), row.method_title)
    return row.method_title


def bench_variant(row: StageRow) -> str | None:
    """The ``lightning-afm-bench`` variant with the structure ``row``'s stage leaves, None when it has none.

    ``afm_mlp`` / ``svd_mlp``: the MLP stage; ``afm_emb`` / ``svd_emb``: the embedding stage after
    the same method's MLP stage (the bench's EMB variants are cumulative, as the paper's Table 4
    rows); ``ttd_emb``: TT tables straight on the baseline, whatever the cores started from (the
    structure, hence the speed, is the same). AFM or SVD tables on the baseline (MLP untouched)
    were not timed.
    """
    stages = row.run.stages[: row.index + 1]
    kinds = [str(st.get("kind")) for st in stages]
    methods = {str(st.get("method")) for st in stages}
    if len(methods) != 1:
        return None
    method = methods.pop()
    if method in ("afm", "svd") and kinds in (["mlp"], ["mlp", "emb"]):
        return f"{method}_{kinds[-1]}"
    if method == "ttd" and kinds == ["emb"]:
        return "ttd_emb"
    return None


def build(runs: list[Run], context: Context) -> TableReport:
    sections = []
    bench_notes: list[str] = []
    for (data, model), members in group(runs, lambda r: (r.data, r.model)).items():
        bench = bench_columns(data, context, bench_notes)
        extra = {}
        if bench is not None:
            def cells(rows: Sequence[StageRow] | None, bench=bench, model=model) -> list[str]:
                return bench.cells(model, "baseline" if rows is None else bench_variant(rows[0]))
            extra = {"extra_headers": bench.headers, "extra": cells}
        table = stage_table(members, variant_title, "Method", order=ORDER, **extra)
        sections.append(f"## {model_title(model)} on {data}\n\n{table}")
    notes = [
        "Pre-train: test AUC / logloss right after the swap, before any finetuning; fine-tune: after the stage's "
        "finetune epoch. Test split.",
        "EMB (after MLP) is the paper's pipeline (the MLP-compressed, finetuned model); EMB (on the baseline) "
        "applies the embedding stage straight to the baseline (compression=afm_emb / svd_emb / ttd_emb / "
        "ttd_svd_emb). TTD is the TT-Rec baseline at TT-rank 16 (compression.emb.rank): tensor-train cores for the "
        "tables of >= compression.emb.ttd_min_rows rows (10^5) and their LR tables, the other tables dense; "
        "'random init, TT-Rec' starts the cores at random as TT-Rec (the paper's TTD, compression=ttd_emb), "
        "'TT-SVD init' from TT-SVD of the trained tables (compression=ttd_svd_emb).",
        "Compression = baseline parameters / parameters.",
        *dict.fromkeys(bench_notes),
    ]
    if context.bench:
        notes.append("Bench rows: Baseline, AFM/SVD MLP (bench afm_mlp / svd_mlp), AFM/SVD EMB (after MLP) "
                     "(afm_emb / svd_emb: MLP and tables compressed, the paper's +AFM EMB and +SVD EMB) and both TTD "
                     "rows (ttd_emb: the same TT structure, whatever its cores started from; the bench compresses "
                     "the tables of >= 10^5 rows, or of at least its row cap when tables are capped, not the "
                     "runs' compression.emb.ttd_min_rows). EMB on the baseline with AFM or SVD has no bench "
                     "variant (–). Gain = samples/s against the bench's baseline.")
    return TableReport(TITLE, sections, notes)
