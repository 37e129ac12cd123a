"""Fold the per-field embedding projections into the first MLP Linear.

In DeepFM, DCN, DCNv2, GDCN and AutoInt the first MLP Linear reads
``cat([X.flatten(1), numeric])`` with ``X`` the ``[B, F, t]`` field embeddings (field-major).
After AFM/SVD on the tables, field ``i``'s vector is ``U_i c_i + b_i`` (``U_i`` ``[t, k]``,
codes ``c_i`` ``[k]``), so with ``W'_i`` the ``[out, t]`` block of the first Linear that reads
field ``i``::

    sum_i W'_i (U_i c_i + b_i) = sum_i (W'_i U_i) c_i + sum_i W'_i b_i

The MLP can then read the ``k``-dim codes directly through a Linear of input width
``F k + N``: block ``i`` becomes ``W'_i U_i`` and the bias gains ``sum_i W'_i b_i``. The models
switch to reading codes when ``model.mlp_reads_codes`` is True. Interaction layers (FM,
cross network, attention) keep using the projected ``t``-dim vectors.

Not possible for NFM and FiBiNet (``MLP_READS_EMBEDDINGS = False``): an interaction sits
between the embeddings and the MLP. (FiBiNet's interaction is bilinear, so at inference it
folds its bilinear layers and first MLP Linear onto products of the codes by itself, without
changing its structure: :mod:`lightning_afm.models.layers.bilinear_codes`.)
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_afm.compress.modules import LowRankEmbedding, LowRankLinear
from lightning_afm.compress.plan import PlanEntry

__all__ = ["fold_into_first_linear", "replay_fold", "FIRST_MLP_LINEAR", "first_mlp_linear_name"]

#: Name of the first MLP Linear in the zoo's models (``mlp`` is an nn.Sequential of blocks).
FIRST_MLP_LINEAR = "mlp.0.linear"


def _check_foldable(model: nn.Module) -> list[LowRankEmbedding]:
    cls = type(model).__name__
    reads = getattr(type(model), "MLP_READS_EMBEDDINGS", None)
    if reads is None:
        raise ValueError(
            f"{cls} does not declare MLP_READS_EMBEDDINGS, so it is unknown whether its MLP reads the "
            "embeddings directly; folding needs a model following the lightning_afm.models contract "
            "(set fold=False to keep the per-field projections)"
        )
    if not reads:
        raise ValueError(
            f"cannot fold the embedding projections of {cls}: an interaction layer sits between its "
            "embeddings and its MLP (MLP_READS_EMBEDDINGS = False, as in NFM and FiBiNet); "
            "keep the per-field projections (fold=False)"
        )
    if getattr(model, "mlp_reads_codes", False):
        raise ValueError(f"{cls} is already folded (mlp_reads_codes is True)")
    embeddings = getattr(model, "embeddings", None)
    if embeddings is None or not hasattr(embeddings, "tables"):
        raise ValueError(f"{cls} has no `embeddings` FieldEmbedding to fold")
    tables = list(embeddings.tables())
    plain = [n for n, t in zip(embeddings.module_names, tables) if not isinstance(t, LowRankEmbedding)]
    if plain:
        raise ValueError(
            f"cannot fold: every field table must be compressed first (LowRankEmbedding), "
            f"but these are not: {['embeddings.' + n for n in plain]}"
        )
    shapes = {(t.embedding_dim, t.code_dim) for t in tables}
    if len(shapes) != 1:
        raise ValueError(
            f"cannot fold: the model reads codes as one [B, F, k] tensor, so all tables need the same "
            f"(embedding_dim, code_dim); got {sorted(shapes)}"
        )
    return tables


def first_mlp_linear_name(model: nn.Module) -> str:
    """Dotted name of the nn.Linear that reads the embeddings (inside a LowRankLinear if compressed)."""
    try:
        module = model.get_submodule(FIRST_MLP_LINEAR)
    except AttributeError:
        raise ValueError(
            f"{type(model).__name__} has no {FIRST_MLP_LINEAR!r}; folding needs `mlp` to be an "
            "nn.Sequential of blocks with a `.linear`"
        ) from None
    if isinstance(module, LowRankLinear):
        return FIRST_MLP_LINEAR + ".first"
    if isinstance(module, nn.Linear):
        return FIRST_MLP_LINEAR
    raise ValueError(f"{FIRST_MLP_LINEAR!r} is a {type(module).__name__}, not an nn.Linear")


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def fold_into_first_linear(model: nn.Module) -> PlanEntry:
    """Fold every field's ``k -> t`` projection into the first MLP Linear; the MLP then reads codes.

    Shapes: the first MLP Linear ``[out, F t + N]`` becomes ``[out, F k + N]`` (``F`` fields,
    table width ``t``, code width ``k``, ``N`` numeric features after the fields).

    Returns:
        The ``"fold"`` :class:`PlanEntry` (``shape`` = the old ``[out, F t + N]``).

    Raises:
        ValueError: before changing anything, if the model's MLP does not read the
            embeddings directly, a table is not factored, tables differ in ``k``, the first
            Linear's width is not ``F t + N``, or the model is already folded.
    """
    tables = _check_foldable(model)
    name = first_mlp_linear_name(model)
    linear: nn.Linear = model.get_submodule(name)  # type: ignore[assignment]
    num_fields = len(tables)
    t, k = tables[0].embedding_dim, tables[0].code_dim
    out_features, in_features = linear.weight.shape
    num_numeric = in_features - num_fields * t
    if num_numeric < 0:
        raise ValueError(
            f"{name!r} reads {in_features} inputs, fewer than {num_fields} fields x {t} dims; "
            "it does not read the concatenated embeddings"
        )

    w = linear.weight.detach().to(torch.float64)
    blocks = w[:, : num_fields * t].reshape(out_features, num_fields, t)  # [out, F, t]
    proj_w = torch.stack([tab.projection.weight.detach() for tab in tables]).to(w)  # [F, t, k]
    new_blocks = torch.einsum("oft,ftk->ofk", blocks, proj_w).reshape(out_features, num_fields * k)
    new_weight = torch.cat([new_blocks, w[:, num_fields * t :]], dim=1)

    has_bias = linear.bias is not None or any(tab.projection.bias is not None for tab in tables)
    new_bias = None
    if has_bias:
        new_bias = torch.zeros(out_features, dtype=torch.float64, device=w.device)
        if linear.bias is not None:
            new_bias += linear.bias.detach().to(torch.float64)
        for i, tab in enumerate(tables):
            if tab.projection.bias is not None:
                new_bias += blocks[:, i] @ tab.projection.bias.detach().to(torch.float64)

    folded = nn.Linear(
        new_weight.shape[1], out_features, bias=has_bias, device=linear.weight.device, dtype=linear.weight.dtype
    )
    with torch.no_grad():
        folded.weight.copy_(new_weight)
        if new_bias is not None:
            folded.bias.copy_(new_bias)
    _replace(model, name, folded)
    model.mlp_reads_codes = True
    return PlanEntry(
        name=name,
        kind="fold",
        method=None,
        rank=None,
        shape=[out_features, in_features],
        flags={
            "in_features": int(new_weight.shape[1]),
            "bias": bool(has_bias),
            "num_fields": num_fields,
            "embedding_dim": int(t),
            "code_dim": int(k),
            "num_numeric": int(num_numeric),
        },
    )


def replay_fold(model: nn.Module, entry: PlanEntry) -> None:
    """Rebuild the structure of a fold (weights unset) on a model whose tables are already factored."""
    _check_foldable(model)
    linear = model.get_submodule(entry.name)
    if not isinstance(linear, nn.Linear) or list(linear.weight.shape) != entry.shape:
        raise ValueError(
            f"cannot replay the fold of {entry.name!r}: expected an nn.Linear of weight {entry.shape}, "
            f"found {type(linear).__name__} {list(getattr(linear, 'weight', torch.empty(0)).shape)}"
        )
    folded = nn.Linear(
        int(entry.flags["in_features"]),
        entry.shape[0],
        bias=bool(entry.flags.get("bias", True)),
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    _replace(model, entry.name, folded)
    model.mlp_reads_codes = True
