"""Parameter counts of the seven models at the paper's shapes (Table 2), built on the meta device.

No memory is allocated and no data is needed: the Criteo and Avazu cardinalities of the full
datasets (../shared/data/README.md) are written below. Also prints the counts after AFM on MLP
layers 2 and 3 (rank 64 on Criteo, 640 on Avazu) and after AFM on the embeddings
(rank 2 / 8), with the fold where the model allows it.

    .venv/bin/python benchmarks/param_counts.py
"""

from __future__ import annotations

import torch

from lightning_afm.compress import (
    DEFAULT_EMBEDDING_TARGETS, DEFAULT_MLP_TARGETS, LowRankEmbedding, LowRankLinear, fold_into_first_linear,
    get_submodule, resolve_targets, set_submodule,
)
from lightning_afm.data.schema import Schema
from lightning_afm.models import MODELS, count_parameters

CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
          27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
AVAZU = [240, 7, 7, 4737, 7745, 26, 8552, 559, 36, 2686408, 6729486, 8251, 5, 4, 2626, 8, 9, 435, 4, 68, 172, 60]
DATASETS = {
    # name: (vocab sizes, numeric fields, embedding dim, MLP width, MLP rank, embedding rank)
    "criteo": (CRITEO, 13, 16, 400, 64, 2),
    "avazu": (AVAZU, 0, 50, 2000, 640, 8),
}
TABLE_2 = {
    "criteo": {"dcn": 574.46, "deepfm": 574.46, "nfm": 574.30, "autoint": 574.46,
               "fibinet": 578.62, "dcnv2": 574.83, "gdcn": 575.19},
    "avazu": {"dcn": 492.14, "deepfm": 492.13, "nfm": 490.03, "autoint": 492.16,
              "fibinet": 537.29, "dcnv2": 494.55, "gdcn": 496.97},
}


def _swap(model, names, build) -> None:
    """Swap in AFM's structure (meta tensors hold no values, so no factors are computed)."""
    for name in names:
        set_submodule(model, name, build(get_submodule(model, name)))


def main() -> None:
    print("| dataset | model | Table 2 (M) | ours | + AFM MLP | + AFM EMB |")
    print("|---|---|---|---|---|---|")
    for dataset, (vocab, numeric, dim, width, mlp_rank, emb_rank) in DATASETS.items():
        schema = Schema.from_vocab_sizes(vocab, numeric=numeric).to_dict()
        for name, cls in MODELS.items():
            with torch.device("meta"):
                model = cls(schema=schema, embedding_dim=dim, mlp_hidden=[width] * 3)
                base = count_parameters(model)
                mlp = resolve_targets(model, DEFAULT_MLP_TARGETS, "linear")
                # AFM: both factors have a bias, a ReLU between them.
                _swap(model, mlp, lambda old: LowRankLinear(old.in_features, old.out_features, mlp_rank, relu=True))
                after_mlp = count_parameters(model)
                emb = resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding")
                _swap(model, emb, lambda old: LowRankEmbedding(old.num_embeddings, old.embedding_dim, emb_rank))
                if cls.MLP_READS_EMBEDDINGS:
                    fold_into_first_linear(model)
                after_emb = count_parameters(model)
            print(f"| {dataset} | {name} | {TABLE_2[dataset][name]:.2f} | {base:,} | {after_mlp:,} | {after_emb:,} |")


if __name__ == "__main__":
    main()
