"""Table 4: AFM against SVD and TTD (DeepFM in the paper), pre-train and fine-tune AUC and logloss, per stage.

Runs: ``compression=afm`` and ``svd`` (MLP stage, then the embedding stage after it), and
``ttd_emb`` / ``afm_emb`` / ``svd_emb`` (the embedding stage straight on the baseline, so
TTD has AFM and SVD rows to compare with on equal terms).
"""

from __future__ import annotations

from lightning_afm.report.common import Context, TableReport, group
from lightning_afm.report.format import model_title
from lightning_afm.report.runs import Run
from lightning_afm.report.tables.stage_table import stage_table

TITLE = "Table 4: AFM, SVD and TTD, before and after finetuning"
# Override keys this table tells apart in its rows (the others must not vary: see
# common.check_nothing_hidden_is_averaged).
SHOWN = ("compression",)


def build(runs: list[Run], context: Context) -> TableReport:
    sections = []
    for (data, model), members in group(runs, lambda r: (r.data, r.model)).items():
        table = stage_table(members, lambda s: s.method_title, "Method", order=("AFM", "SVD", "TTD"))
        sections.append(f"## {model_title(model)} on {data}\n\n{table}")
    notes = [
        "Pre-train: test AUC / logloss right after the swap, before any finetuning; fine-tune: after the stage's "
        "finetune epoch. Test split.",
        "EMB (after MLP) is the paper's pipeline (the MLP-compressed, finetuned model); EMB (on the baseline) "
        "applies the embedding stage straight to the baseline (compression=afm_emb / svd_emb / ttd_emb). "
        "TTD is the TT-Rec baseline (tensor-train tables; TT-rank and initialisation from compression.emb.rank / "
        "ttd_init, by default 16 and TT-SVD of the trained tables).",
        "Compression = baseline parameters / parameters.",
    ]
    return TableReport(TITLE, sections, notes)
