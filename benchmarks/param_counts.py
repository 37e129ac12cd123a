"""Parameter counts of the seven models at the paper's shapes (Table 2), built on the meta device.

No memory is allocated and no data is needed: the shapes (the Criteo and Avazu cardinalities of
the full datasets, widths and ranks) live in :mod:`lightning_afm.bench.shapes`, and every
variant is built by :func:`lightning_afm.bench.build_structure`, exactly as
``lightning-afm-bench`` builds it before timing: the baseline, AFM on MLP layers 2 and 3 (rank 64
on Criteo, 320 on Avazu), cumulative AFM on the embeddings (rank 2 / 8, folded where the model
allows it), the same with SVD, and TT-Rec tables (TT-rank 16, the tables of >= 10^5 rows and
their LR tables). The last column quotes Table 2's +AFM MLP and +AFM EMB counts for comparison;
a second table puts DeepFM's TTD counts next to Table 4's (line 715).

    .venv/bin/python benchmarks/param_counts.py
"""

from __future__ import annotations

import sys
from pathlib import Path

try:  # run from a checkout without installing the package
    import lightning_afm  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_afm.bench.shapes import PAPER_SHAPES, TABLE_2_AFM_PARAMS_M, TABLE_2_PARAMS_M, TABLE_4_TTD_PARAMS_M
from lightning_afm.bench.variants import OUR_VARIANTS, VariantSettings, build_structure
from lightning_afm.models import MODELS, count_parameters

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


if __name__ == "__main__":
    main()
