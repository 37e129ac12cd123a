"""Parameter counts of the seven models at the paper's shapes (Table 2), built on the meta device.

No memory is allocated and no data is needed: the shapes (the Criteo and Avazu cardinalities of
the full datasets, widths and ranks) live in :mod:`lightning_afm.bench.shapes`, and every
variant is built by :func:`lightning_afm.bench.build_structure`, exactly as
``lightning-afm-bench`` builds it before timing: the baseline, AFM on MLP layers 2 and 3 (rank 64
on Criteo, 320 on Avazu), cumulative AFM on the embeddings (rank 2 / 8, folded where the model
allows it), the same with SVD, and TT-Rec tables (TT-rank 16, the tables of >= 10^5 rows and
their LR tables). The last column quotes Table 2's +AFM MLP and +AFM EMB counts for comparison;
a second table puts DeepFM's TTD counts next to Table 4's (line 715); a third DeepFM's QR and PQ
counts (``compression=qr_emb`` / ``pq_emb``, their settings read from those configs) next to
Table 17's (line 1187-1194), PQ's codes counted as one stored value each.

    .venv/bin/python benchmarks/param_counts.py
"""

from __future__ import annotations

import sys
from pathlib import Path

try:  # run from a checkout without installing the package
    import lightning_afm  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf

from lightning_afm.bench.shapes import (
    PAPER_SHAPES,
    TABLE_2_AFM_PARAMS_M,
    TABLE_2_PARAMS_M,
    TABLE_4_TTD_PARAMS_M,
    TABLE_17_PARAMS_M,
)
from lightning_afm.bench.variants import OUR_VARIANTS, VariantSettings, build_structure
from lightning_afm.compress import CompressionPlan, PlanEntry, replay_plan, stored_values
from lightning_afm.compress.qr import qr_saves
from lightning_afm.models import MODELS, count_parameters

CONF = Path(__file__).resolve().parents[1] / "lightning_afm" / "conf" / "compression"

#: Kept for scripts that imported them from here.
CRITEO = PAPER_SHAPES["criteo"].vocab_sizes
AVAZU = PAPER_SHAPES["avazu"].vocab_sizes
TABLE_2 = TABLE_2_PARAMS_M


def main() -> None:
    titles = {"baseline": "ours", "afm_mlp": "+ AFM MLP", "afm_emb": "+ AFM EMB", "svd_mlp": "+ SVD MLP",
              "svd_emb": "+ SVD EMB", "ttd_emb": "+ TTD EMB"}
    print("| dataset | model | Table 2 (M) | " + " | ".join(titles[v] for v in OUR_VARIANTS)
          + " | Table 2 + AFM MLP / EMB (M) |")
    print("|---|---|---|" + "---|" * len(OUR_VARIANTS) + "---|")
    for dataset, shape in PAPER_SHAPES.items():
        settings = VariantSettings(mlp_rank=shape.mlp_rank, emb_rank=shape.emb_rank)
        for name in MODELS:
            counts = [count_parameters(build_structure(name, shape, v, settings)) for v in OUR_VARIANTS]
            print(f"| {dataset} | {name} | {TABLE_2_PARAMS_M[dataset][name]:.2f} | "
                  + " | ".join(f"{c:,}" for c in counts)
                  + " | {:.2f} / {:.2f} |".format(*TABLE_2_AFM_PARAMS_M[dataset][name]))
    print()
    print("| dataset | DeepFM + TTD EMB (ours) | Table 4 (M) | difference (M) | TT tables (with their LR tables) |")
    print("|---|---|---|---|---|")
    for dataset, shape in PAPER_SHAPES.items():
        settings = VariantSettings(mlp_rank=shape.mlp_rank, emb_rank=shape.emb_rank)
        model = build_structure("deepfm", shape, "ttd_emb", settings)
        ours, paper = count_parameters(model), TABLE_4_TTD_PARAMS_M[dataset]
        large = sum(1 for s in shape.vocab_sizes if s >= settings.tt_min_rows)
        print(f"| {dataset} | {ours:,} ({ours / 1e6:.2f}M) | {paper:.2f} | {ours / 1e6 - paper:+.3f} | "
              f"{large} of {shape.num_fields} (>= {settings.tt_min_rows:,} rows) |")

    print()
    table17()


def table17_structure(method: str, shape=PAPER_SHAPES["criteo"]):
    """DeepFM at ``shape`` on the meta device with its tables as ``compression=<method>_emb`` builds them."""
    emb = OmegaConf.load(CONF / f"{method}_emb.yaml").compression.emb
    model = build_structure("deepfm", shape, "baseline", VariantSettings(mlp_rank=shape.mlp_rank, emb_rank=shape.emb_rank))
    entries = []
    for field, rows in zip(shape.field_names, shape.vocab_sizes):
        name, width = f"embeddings.{field}", shape.embedding_dim
        if method == "qr" and qr_saves(rows, emb.rank):
            entries.append(PlanEntry(name, "qr_embedding", "qr", emb.rank, [rows, width],
                                     flags={"operation": emb.qr_operation}))
        elif method == "pq":
            entries.append(PlanEntry(name, "pq_embedding", "pq", emb.rank, [rows, width],
                                     flags={"num_centroids": min(emb.pq_centroids, rows)}))
    replay_plan(model, CompressionPlan(entries))
    return model, emb


def table17() -> None:
    print("| DeepFM on Criteo | ours (stored values) | Table 17 (M) | setting |")
    print("|---|---|---|---|")
    for method, setting in (("qr", "{rank} collisions, op {qr_operation}"),
                            ("pq", "D = {rank} codes per row, K = {pq_centroids} centroids per sub-space")):
        model, emb = table17_structure(method)
        ours = stored_values(model)
        print(f"| {method.upper()} | {ours:,} ({ours / 1e6:.2f}M) | {TABLE_17_PARAMS_M[method]:.2f} | "
              f"{setting.format(**emb)} |")


if __name__ == "__main__":
    main()
