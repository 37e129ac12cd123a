"""Table 6: AFM with and without the ReLU between the two factors, pre-train and fine-tune.

Runs: ``compression=afm_mlp`` with ``compression.mlp.relu=true compression.mlp.relu_init=shift,plain``
and with ``compression.mlp.relu=false``; the settings are read from each run's config. ``plain`` is
the paper's variant (a ReLU added between the factors as they come, line 374-381, 753-765), ``shift`` ours (components
oriented by their mean and the first bias shifted so that the ReLU starts inactive).
"""

from __future__ import annotations

from lightning_afm.report.common import Context, StageRow, TableReport, group
from lightning_afm.report.format import model_title
from lightning_afm.report.runs import Run
from lightning_afm.report.tables.stage_table import stage_table

TITLE = "Table 6: AFM with and without the ReLU between the factors"
# Override keys this table tells apart in its rows (the others must not vary: see
# common.check_nothing_hidden_is_averaged).
SHOWN = ("compression", "compression.mlp.relu", "compression.mlp.relu_init")
WITH, PLAIN, WITHOUT = "AFM with ReLU", "AFM with ReLU, plain (the paper's)", "AFM without ReLU"
UNKNOWN = "AFM (ReLU not recorded)"


def _variant(row: StageRow) -> str:
    relu = row.run.value("compression.mlp.relu")
    if relu is None:
        return UNKNOWN
    if not relu:
        return f"{row.method_title} without ReLU"
    init = row.run.value("compression.mlp.relu_init", "shift")
    return f"{row.method_title} with ReLU" + ("" if init == "shift" else f", {init} (the paper's)")


def build(runs: list[Run], context: Context) -> TableReport:
    sections = []
    for (data, model), members in group(runs, lambda r: (r.data, r.model)).items():
        table = stage_table(members, _variant, "Variant", order=(WITH, PLAIN, WITHOUT))
        sections.append(f"## {model_title(model)} on {data}\n\n{table}")
    notes = [
        "The ReLU sits between the two factors of each compressed MLP layer (2nd and 3rd); the layer's own ReLU "
        "after it stays either way. With the ReLU (relu_init=shift, ours), AFM orients the components and shifts "
        "the first bias so that the ReLU starts inactive (see lightning_afm/compress/factorize.py), so the swap "
        "alone changes little; plain (relu_init=plain) is the paper's: the factors as they come, so the ReLU "
        "cuts the negative part of every component at the swap.",
        "Pre-train: test AUC / logloss right after the swap; fine-tune: after the stage's finetune epoch.",
    ]
    return TableReport(TITLE, sections, notes)
