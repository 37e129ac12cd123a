"""Table 8: MLP ranks (paper: {32, 64, 96, 128} on Criteo, {160, 320, 480, 640} on Avazu)."""

from __future__ import annotations

from lightning_afm.report.common import Context, TableReport
from lightning_afm.report.runs import Run
from lightning_afm.report.tables.rank_sweep import build_rank_sweep

TITLE = "Table 8: AFM on the MLP at several ranks"
# Override keys this table tells apart in its rows (the others must not vary: see
# common.check_nothing_hidden_is_averaged).
SHOWN = ("compression", "compression.mlp.rank")


def build(runs: list[Run], context: Context) -> TableReport:
    return build_rank_sweep(
        runs, "mlp", TITLE, "Rank = k of each compressed MLP layer (the 2nd and 3rd).",
        "Kept variance: share of each compressed layer's output variance kept by k components (2nd / 3rd layer).",
        "MLP rank k")
