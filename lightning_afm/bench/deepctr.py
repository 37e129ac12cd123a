"""DeepCTR-Torch 0.3.0's implementation of our models at the same shape: the reference for speed.

DeepCTR-Torch (the AFM authors' base) is optional: :func:`deepctr_unavailable` says why it
cannot be used (None when it can), and the benchmark skips its variant with that message.

Its models read one float matrix ``X`` ``[B, F + N]``: the ``F`` categorical ids (as floats,
cast back with ``.long()`` inside its forward), then the ``N`` numeric values; see
:func:`deepctr_input`. Which of its classes stands for which of ours (same widths, layers and
defaults as our models' docstrings say):

=========  =====================================================================
ours       DeepCTR-Torch 0.3.0
=========  =====================================================================
dcn        ``DCN(cross_num=2, cross_parameterization="vector")``
dcnv2      ``DCN(cross_num=2, cross_parameterization="matrix")``
deepfm     ``DeepFM``
nfm        ``NFM``
autoint    ``AutoInt(att_layer_num=3, att_head_num=2, att_res=True)``
fibinet    ``FiBiNET(bilinear_type="interaction", reduction_ratio=3)``: one bilinear
           layer shared by both branches, so it has fewer parameters than ours (Criteo
           578.53M against 578.62M) but the same work per sample
gdcn       none (DeepCTR-Torch has no GDCN)
=========  =====================================================================
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightning_afm.bench.shapes import PaperShape

__all__ = [
    "DEEPCTR_VERSION",
    "DEEPCTR_MODELS",
    "deepctr_unavailable",
    "feature_columns",
    "build_deepctr_model",
    "share_tables_",
    "deepctr_input",
]

#: The version the benchmark compares with (the one the paper's authors built on).
DEEPCTR_VERSION = "0.3.0"
#: Our model name -> a short description of the DeepCTR-Torch class used (GDCN has none).
DEEPCTR_MODELS = {
    "dcn": "DCN (vector cross, 2 layers)",
    "dcnv2": "DCN (matrix cross, 2 layers)",
    "deepfm": "DeepFM",
    "nfm": "NFM",
    "autoint": "AutoInt (3 layers, 2 heads, residual)",
    "fibinet": "FiBiNET (interaction bilinear, shared between branches)",
}
#: Float32 holds every integer up to 2^24 exactly; DeepCTR-Torch passes ids through a float matrix.
_FLOAT32_EXACT = 2**24


def deepctr_unavailable() -> str | None:
    """Why DeepCTR-Torch cannot be used here, or None when ``deepctr_torch`` imports."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import deepctr_torch  # noqa: F401
    except Exception as err:  # ImportError, or a broken install raising anything else
        return (
            f"DeepCTR-Torch is not importable ({type(err).__name__}: {err}); to compare with it install "
            f"`pip install --no-deps deepctr-torch=={DEEPCTR_VERSION} requests`"
        )
    version = getattr(deepctr_torch, "__version__", None)
    if version is not None and version != DEEPCTR_VERSION:
        warnings.warn(f"DeepCTR-Torch {version} found; the benchmark was written for {DEEPCTR_VERSION}", stacklevel=2)
    return None


def feature_columns(shape: PaperShape, rows: int | None = None) -> list[Any]:
    """DeepCTR-Torch feature columns for ``shape``: one ``SparseFeat`` per field, then ``DenseFeat`` s.

    ``rows``: give every table this many rows instead of the shape's (1 builds the model
    without its big tables, for :func:`share_tables_` to fill in).
    """
    from deepctr_torch.inputs import DenseFeat, SparseFeat

    columns = [
        SparseFeat(name, rows if rows is not None else size, embedding_dim=shape.embedding_dim)
        for name, size in zip(shape.field_names, shape.vocab_sizes)
    ]
    columns += [DenseFeat(f"I{i + 1}", 1) for i in range(shape.num_numeric)]
    return columns


def _constructors() -> dict[str, Callable[..., nn.Module]]:
    from deepctr_torch import models as dc

    return {
        "dcn": lambda cols, **kw: dc.DCN(cols, cols, cross_num=2, cross_parameterization="vector", **kw),
        "dcnv2": lambda cols, **kw: dc.DCN(cols, cols, cross_num=2, cross_parameterization="matrix", **kw),
        "deepfm": lambda cols, **kw: dc.DeepFM(cols, cols, **kw),
        "nfm": lambda cols, **kw: dc.NFM(cols, cols, **kw),
        "autoint": lambda cols, **kw: dc.AutoInt(cols, cols, att_layer_num=3, att_head_num=2, att_res=True, **kw),
        "fibinet": lambda cols, **kw: dc.FiBiNET(cols, cols, bilinear_type="interaction", reduction_ratio=3, **kw),
    }


def build_deepctr_model(
    model_name: str,
    shape: PaperShape,
    tables_from: nn.Module | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> nn.Module:
    """DeepCTR-Torch's ``model_name`` at ``shape`` (MLP ``shape.mlp_hidden``), on the CPU, in eval mode.

    Args:
        model_name: one of :data:`DEEPCTR_MODELS`.
        shape: the dataset shape.
        tables_from: one of our uncompressed models at the same shape: DeepCTR-Torch's
            embedding and LR tables then use its tables' storage (built with one row each and
            swapped, so the full tables are never allocated twice). None: DeepCTR-Torch
            allocates and initialises its own.
        seed: DeepCTR-Torch's ``seed`` argument.
        **kwargs: more constructor arguments (``dnn_dropout``, ``l2_reg_embedding``...).

    Raises:
        ValueError: for a model DeepCTR-Torch does not have (GDCN), or a table too large for
            its float input matrix to hold the ids exactly.
    """
    if model_name not in DEEPCTR_MODELS:
        raise ValueError(
            f"DeepCTR-Torch {DEEPCTR_VERSION} has no {model_name!r}; it implements {sorted(DEEPCTR_MODELS)}"
        )
    too_big = [n for n, v in zip(shape.field_names, shape.vocab_sizes) if v > _FLOAT32_EXACT]
    if too_big:
        raise ValueError(
            f"fields {too_big} have more than 2^24 rows: DeepCTR-Torch's float32 input cannot hold their ids"
        )
    kwargs.setdefault("dnn_hidden_units", tuple(shape.mlp_hidden))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _constructors()[model_name](
            feature_columns(shape, rows=1 if tables_from is not None else None), seed=seed, device="cpu", **kwargs
        )
    if tables_from is not None:
        share_tables_(model, tables_from, shape)
    return model.eval()


def share_tables_(deepctr_model: nn.Module, ours: nn.Module, shape: PaperShape) -> None:
    """Point DeepCTR-Torch's embedding and LR tables at our model's (same shapes), in place.

    Both index a field's table by the same ids, so the two models then read the same memory.
    """
    ours_emb = dict(zip(shape.field_names, ours.embeddings.tables()))
    ours_lr = dict(zip(shape.field_names, ours.linear.tables()))
    pairs = [(deepctr_model.embedding_dict, ours_emb), (deepctr_model.linear_model.embedding_dict, ours_lr)]
    for theirs, mine in pairs:
        for name in shape.field_names:
            table, source = theirs[name], mine[name]
            if not isinstance(source, nn.Embedding):
                raise ValueError(f"our table {name!r} is a {type(source).__name__}; share the baseline's plain tables")
            if table.embedding_dim != source.embedding_dim:
                raise ValueError(
                    f"table {name!r}: DeepCTR-Torch width {table.embedding_dim}, ours {source.embedding_dim}"
                )
            table.weight = source.weight
            table.num_embeddings = source.num_embeddings


def deepctr_input(categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
    """DeepCTR-Torch's input matrix: ``[B, F]`` ids and ``[B, N]`` values -> ``[B, F + N]`` float32."""
    if int(categorical.max()) >= _FLOAT32_EXACT:
        raise ValueError("ids of 2^24 and above are not exact in DeepCTR-Torch's float32 input")
    return torch.cat([categorical.to(torch.float32), numeric.to(torch.float32)], dim=1)
