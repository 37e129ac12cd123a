"""Table 7: embedding ranks (paper: {2, 4, 8, 12} on Criteo, {4, 8, 16, 32} on Avazu)."""

from __future__ import annotations

from lightning_afm.report.common import Context, TableReport
from lightning_afm.report.runs import Run
from lightning_afm.report.tables.rank_sweep import build_rank_sweep

TITLE = "Table 7: AFM on the embeddings at several ranks"
# Override keys this table tells apart in its rows (the others must not vary: see
# common.check_nothing_hidden_is_averaged).
SHOWN = ("compression", "compression.emb.rank")


def build(runs: list[Run], context: Context) -> TableReport:
    return build_rank_sweep(
        runs, "emb", TITLE, "Rank = k, the width of the compressed tables (from t = model.embedding_dim).",
        "Kept variance: share of each field's embedding variance kept by k components (mean over the fields, and "
        "the worst field).", "embedding rank k")
