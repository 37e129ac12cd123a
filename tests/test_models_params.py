"""Parameter counts of the seven models at the paper's configurations (Table 2), built on ``meta``.

Each expected count is also derived here by hand, term by term, from the
architecture (DeepCTR-Torch 0.3.0's defaults, see the model docstrings), so a
change that keeps the rounding but alters the structure still fails.
"""

from __future__ import annotations

import pytest
import torch

from lightning_afm.data.schema import Schema
from lightning_afm.models import MODELS, build_model, count_parameters

CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
          27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
AVAZU = [240, 7, 7, 4737, 7745, 26, 8552, 559, 36, 2686408, 6729486, 8251, 5, 4, 2626, 8, 9, 435, 4, 68, 172, 60]

# Table 2 of the paper, millions of parameters
TABLE_2 = {
    "criteo": {"dcn": 574.46, "deepfm": 574.46, "nfm": 574.30, "autoint": 574.46,
               "fibinet": 578.62, "dcnv2": 574.83, "gdcn": 575.19},
    "avazu": {"dcn": 492.14, "deepfm": 492.13, "nfm": 490.03, "autoint": 492.16,
              "fibinet": 537.29, "dcnv2": 494.55, "gdcn": 496.97},
}
CONFIGS = {
    "criteo": dict(vocab=CRITEO, numeric=13, d=16, hidden=400),
    "avazu": dict(vocab=AVAZU, numeric=0, d=50, hidden=2000),
}


def expected_count(model: str, vocab: list[int], numeric: int, d: int, hidden: int) -> int:
    """The count derived from the architecture, independently of the code."""
    f, v, n, h = len(vocab), sum(vocab), numeric, hidden
    lr = v + (n + 1 if n else 0)  # one weight per value, numeric Linear(N, 1) with its bias
    emb = v * d
    D = f * d + n  # [flattened embeddings, numeric]

    def mlp(inp: int) -> int:
        return inp * h + h + 2 * (h * h + h)

    if model == "deepfm":
        rest = mlp(D) + h + 1
    elif model == "nfm":
        rest = mlp(d + n) + h + 1
    elif model == "dcn":
        rest = 2 * (2 * D) + mlp(D) + (D + h + 1)
    elif model == "dcnv2":
        rest = 2 * (D * D + D) + mlp(D) + (D + h + 1)
    elif model == "gdcn":
        rest = 2 * (2 * D * D + D) + mlp(D) + (D + h + 1)
    elif model == "autoint":
        rest = 3 * 4 * d * d + mlp(D) + (f * d + h + 1)
    elif model == "fibinet":
        pairs = f * (f - 1) // 2
        senet = 2 * f * max(1, f // 3)
        rest = senet + 2 * pairs * d * d + mlp(2 * pairs * d + n) + h + 1
    else:
        raise KeyError(model)
    return emb + lr + rest


def build_meta(model: str, dataset: str):
    cfg = CONFIGS[dataset]
    schema = Schema.from_vocab_sizes(cfg["vocab"], numeric=cfg["numeric"])
    with torch.device("meta"):
        return build_model(model, schema, embedding_dim=cfg["d"], mlp_hidden=[cfg["hidden"]] * 3)


def test_cardinalities_are_the_documented_ones():
    assert sum(CRITEO) == 33_762_577 and sum(AVAZU) == 9_449_445


@pytest.mark.parametrize("dataset", ["criteo", "avazu"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_parameter_count_matches_table_2(model, dataset):
    m = build_meta(model, dataset)
    assert next(m.parameters()).device.type == "meta"
    n = count_parameters(m)
    cfg = CONFIGS[dataset]
    assert n == expected_count(model, cfg["vocab"], cfg["numeric"], cfg["d"], cfg["hidden"])
    assert round(n / 1e6, 2) == TABLE_2[dataset][model], f"{model} on {dataset}: {n:,}"


def test_deepfm_exact_counts():
    assert count_parameters(build_meta("deepfm", "criteo")) == 574_457_024
    assert count_parameters(build_meta("deepfm", "avazu")) == 492_129_696


def test_table_2_pins_the_unknowns():
    """The alternatives the counts rule out (see the model docstrings)."""
    criteo = CONFIGS["criteo"]
    schema = Schema.from_vocab_sizes(criteo["vocab"], numeric=13)
    with torch.device("meta"):
        kw = dict(embedding_dim=16, mlp_hidden=[400] * 3)
        low_rank_dcnv2 = build_model("dcnv2", schema, low_rank=32, num_experts=4, **kw)
        deep_gdcn = build_model("gdcn", schema, cross_layers=3, **kw)
    assert round(count_parameters(low_rank_dcnv2) / 1e6, 2) == 574.69 != TABLE_2["criteo"]["dcnv2"]
    assert round(count_parameters(deep_gdcn) / 1e6, 2) == 575.56 != TABLE_2["criteo"]["gdcn"]
