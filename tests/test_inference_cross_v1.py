"""DCN's cross network at inference as one product (``lightning_afm/inference/cross_v1.py``).

The rewrite ``x_l = c_l x_0 + B_l`` is checked against the layer-by-layer recurrence in float64
numpy (exact to rounding), in code space against ``x_0`` built by numpy from the codes (per-field
ranks), and whole DCN models in every structure against the training model's eval forward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_afm.compress import LowRankEmbedding, LowRankLinear, TTEmbedding, fold_into_first_linear
from lightning_afm.compress import get_submodule, resolve_targets, set_submodule
from lightning_afm.data.schema import Schema
from lightning_afm.inference import Tensors, optimize_for_inference
from lightning_afm.inference.cross_v1 import (
    CodeColumns,
    DCNHead,
    VectorCrossLogit,
    X0Columns,
    build_dcn_head,
    cross_constants,
)
from lightning_afm.inference.heads import ParallelCrossHead
from lightning_afm.models import DEFAULT_EMBEDDING_TARGETS, DEFAULT_MLP_TARGETS, DCN

VOCAB = [9, 7, 5, 11]


def _numpy_cross_logit(x0, weight, bias, out_weight):
    """``w_o . x_L`` by the layer-by-layer recurrence, float64."""
    x = x0.copy()
    for w, b in zip(weight, bias):
        x = x0 * (x @ w)[:, None] + b + x
    return x @ out_weight


def _random_cross(layers, width, head, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(layers, width, generator=g, dtype=dtype) * 0.3
    bias = torch.randn(layers, width, generator=g, dtype=dtype)
    output = torch.randn(1, width + head, generator=g, dtype=dtype)
    return weight, bias, output


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_one_product_equals_the_layer_recurrence_in_float64(layers):
    weight, bias, output = _random_cross(layers, 7, 3, seed=layers)
    x0 = torch.randn(6, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = _numpy_cross_logit(x0.numpy(), weight.numpy(), bias.numpy(), output[0, :7].numpy())
    got = VectorCrossLogit(weight, bias, output, X0Columns())(x0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    # the constants are B_l . w_l with B_l the sum of the biases before layer l
    b = bias.numpy()
    kappa = [b[:l].sum(0) @ weight[l].numpy() for l in range(layers)] + [b.sum(0) @ output[0, :7].numpy()]
    np.testing.assert_allclose(cross_constants(weight, bias, output[0, :7]).numpy(), kappa, rtol=1e-12, atol=1e-12)


def test_float32_agrees_with_the_float64_recurrence_relatively():
    weight, bias, output = _random_cross(3, 29, 5, seed=7, dtype=torch.float32)
    x0 = torch.randn(50, 29, generator=torch.Generator().manual_seed(2)) * 3.0  # large logits
    expected = _numpy_cross_logit(x0.double().numpy(), weight.double().numpy(), bias.double().numpy(),
                                  output[0, :29].double().numpy())
    got = VectorCrossLogit(weight, bias, output, X0Columns())(x0).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("ranks", [[2, 2, 2], [2, 1, 3]])
def test_code_space_equals_the_recurrence_on_the_projected_embeddings(ranks):
    g = torch.Generator().manual_seed(3)
    d, numeric, rows = 4, 2, 8
    projections = [torch.randn(d, k, generator=g, dtype=torch.float64) for k in ranks]
    biases = [torch.randn(d, generator=g, dtype=torch.float64) for _ in ranks]
    width = len(ranks) * d + numeric
    weight, bias, output = _random_cross(2, width, 3, seed=5)
    codes = [torch.randn(rows, k, generator=g, dtype=torch.float64) for k in ranks]
    num = torch.randn(rows, numeric, generator=g, dtype=torch.float64)
    # x_0 built by numpy: each field's P_i c_i + p_i, then the numeric fields
    x0 = np.concatenate([c.numpy() @ p.numpy().T + b.numpy() for c, p, b in zip(codes, projections, biases)]
                        + [num.numpy()], axis=1)
    expected = _numpy_cross_logit(x0, weight.numpy(), bias.numpy(), output[0, :width].numpy())
    logit = VectorCrossLogit(weight, bias, output, CodeColumns(projections, biases))
    got = logit(torch.cat(codes + [num], dim=1))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.jit.script(logit)(torch.cat(codes + [num], dim=1)), got)


# --------------------------------------------------------------------------- whole DCN models


def _dcn(structure, fold=True, ranks=None, numeric=2, seed=0, **hparams):
    torch.manual_seed(seed)
    schema = Schema.from_vocab_sizes(VOCAB, numeric=numeric)
    model = DCN(schema, **{"embedding_dim": 16, "mlp_hidden": [8, 8, 8], "cross_layers": 3, **hparams})
    if structure in ("afm_mlp", "afm_emb"):
        for target in resolve_targets(model, DEFAULT_MLP_TARGETS, "linear"):
            old = get_submodule(model, target)
            set_submodule(model, target, LowRankLinear(old.in_features, old.out_features, 3, relu=True))
    if structure == "afm_emb":
        for i, target in enumerate(resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding")):
            old = get_submodule(model, target)
            rank = ranks[i] if ranks else 2
            set_submodule(model, target, LowRankEmbedding(old.num_embeddings, old.embedding_dim, rank))
        if fold:
            fold_into_first_linear(model)
    with torch.no_grad():  # biases away from zero and cross weights large enough for c_l to matter
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
        for p in model.embeddings.parameters():  # embeddings of order 1 (their init is tiny)
            p.normal_(0.0, 0.7)
        model.cross.weight.mul_(2.0)
        model.cross.bias.uniform_(-1.0, 1.0)
    return model.eval()


def _batch(rows=33, seed=0, numeric=2):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, v, (rows,), generator=g) for v in VOCAB], dim=1)
    return cat, torch.rand(rows, numeric, generator=g) * 2.0


CASES = [
    ("baseline", True, None, False),
    ("afm_mlp", True, None, False),
    ("afm_emb", True, None, True),  # cross and MLP on the codes: no embeddings
    ("afm_emb", False, None, True),  # cross on the codes, MLP on the embeddings
    ("afm_emb", True, [2, 1, 3, 2], True),  # per-field ranks
]


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("structure,fold,ranks,codes", CASES)
def test_every_structure_gives_the_training_models_outputs(structure, fold, ranks, codes, fuse):
    model = _dcn(structure, fold=fold, ranks=ranks)
    fast = optimize_for_inference(model, fuse=fuse)
    assert isinstance(fast.deep, DCNHead) and fast.deep.cross_reads_codes is codes
    assert fast.build_embeddings is not (codes and fold)
    scripted = torch.jit.script(fast)
    for rows in (33, 1):
        cat, num = _batch(rows=rows)
        with torch.no_grad():
            expected = model(cat, num)
        scale = max(float(expected.abs().max()), 1.0)
        assert rows == 1 or scale > 3.0  # the cross part is large here: the tolerance is relative
        torch.testing.assert_close(fast(cat, num), expected, rtol=1e-5, atol=1e-5 * scale)
        torch.testing.assert_close(scripted(cat, num), expected, rtol=1e-5, atol=1e-5 * scale)


def test_without_numeric_fields_and_with_shared_weights_following_training():
    model = _dcn("afm_emb", numeric=0)
    fast = optimize_for_inference(model)
    cat, _ = _batch(numeric=0)
    with torch.no_grad():
        model.cross.bias.add_(0.25)  # in place: the shared inference form sees it
        model.output.weight.mul_(1.5)
        expected = model(cat, None)
    torch.testing.assert_close(fast(cat), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_tables_without_plain_projections_read_x0_and_swapped_cross_networks_run_as_they_are():
    model = _dcn("baseline")
    first = resolve_targets(model, DEFAULT_EMBEDDING_TARGETS, "embedding")[0]
    set_submodule(model, first, TTEmbedding(VOCAB[0], 16, tt_rank=2))
    head = build_dcn_head(model, Tensors())
    assert isinstance(head, DCNHead) and not head.cross_reads_codes
    cat, num = _batch()
    with torch.no_grad():
        expected = model(cat, num)
    torch.testing.assert_close(optimize_for_inference(model)(cat, num), expected, rtol=1e-5,
                               atol=1e-5 * float(expected.abs().max()))

    class Doubled(nn.Module):  # a cross network of another class: its own forward must run
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x0):
            return 2.0 * self.inner(x0)

    model.cross = Doubled(model.cross)
    assert isinstance(build_dcn_head(model, Tensors()), ParallelCrossHead)
    with torch.no_grad():
        expected = model(cat, num)
    torch.testing.assert_close(optimize_for_inference(model)(cat, num), expected, rtol=1e-5,
                               atol=1e-5 * float(expected.abs().max()))


def test_bad_shapes_get_clear_errors():
    with pytest.raises(ValueError, match=r"both be \[L, D\]"):
        VectorCrossLogit(torch.zeros(2, 5), torch.zeros(2, 4), torch.zeros(1, 9), X0Columns())
    with pytest.raises(ValueError, match=r"output weight must be \[1, D \+ H\] with D = 5"):
        VectorCrossLogit(torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(1, 3), X0Columns())
    with pytest.raises(ValueError, match="one bias per projection weight"):
        CodeColumns([torch.zeros(4, 2)], [])
    with pytest.raises(ValueError, match=r"one width d, got widths \[4, 5\]"):
        CodeColumns([torch.zeros(4, 2), torch.zeros(5, 2)], [torch.zeros(4), torch.zeros(5)])
