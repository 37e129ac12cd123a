"""Kind ``"fold"``: fold the per-field embedding projections into the first MLP Linear.

In DeepFM, DCN, DCNv2, GDCN and AutoInt the first MLP Linear reads
``cat([X.flatten(1), numeric])`` with ``X`` the ``[B, F, t]`` field embeddings (field-major).
After AFM/SVD on the tables, field ``i``'s vector is ``U_i c_i + b_i`` (``U_i`` ``[t, k]``,
codes ``c_i`` ``[k]``), so with ``W'_i`` the ``[out, t]`` block of the first Linear that reads
field ``i``::

    sum_i W'_i (U_i c_i + b_i) = sum_i (W'_i U_i) c_i + sum_i W'_i b_i

The MLP can then read the codes directly through a Linear of input width
``sum_i k_i + N``: block ``i`` becomes ``W'_i U_i`` (``[out, k_i]``: fields may differ in rank,
as a budgeted compression leaves them) and the bias gains ``sum_i W'_i b_i``. The models
switch to reading codes through the contract (``set_mlp_reads_codes(True)``). Interaction
layers (FM, cross network, attention) keep using the projected ``t``-dim vectors.

Which Linear reads the embeddings, the tables in field order and whether the MLP reads them
directly come from the model's :class:`~lightning_afm.compress.contract.ModelLayout`. Not
possible for NFM and FiBiNet (``mlp_reads_embeddings=False``): an interaction sits between the
embeddings and the MLP. (FiBiNet's interaction is bilinear, so at inference it
folds its bilinear layers and first MLP Linear onto products of the codes by itself, without
changing its structure: :mod:`lightning_afm.inference.fibinet`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lightning_afm.compress.contract import layout_of, mlp_reads_codes, set_mlp_reads_codes
from lightning_afm.compress.modules import LowRankEmbedding, LowRankLinear
from lightning_afm.compress.plan import PlanEntry
from lightning_afm.compress.registry import CompressionKind, Structure, get_kind
from lightning_afm.compress.surgery import get_submodule, plain_linear, set_submodule

__all__ = ["FoldKind", "fold_into_first_linear", "first_mlp_linear_name"]


def _check_foldable(model: nn.Module) -> list[LowRankEmbedding]:
    cls = type(model).__name__
    layout = layout_of(model, "folding")
    if not layout.mlp_reads_embeddings:
        raise ValueError(
            f"cannot fold the embedding projections of {cls}: an interaction layer sits between its "
            "embeddings and its MLP (its layout says mlp_reads_embeddings=False, as NFM and FiBiNet); "
            "keep the per-field projections (fold=False)"
        )
    if layout.mlp_reads_codes:
        raise ValueError(f"{cls} is already folded (its MLP reads the codes)")
    if not layout.field_tables:
        raise ValueError(f"{cls}'s layout names no field tables to fold")
    tables = [get_submodule(model, name) for name in layout.field_tables]
    plain = [n for n, t in zip(layout.field_tables, tables) if not isinstance(t, LowRankEmbedding)]
    if plain:
        raise ValueError(
            f"cannot fold: every field table must be compressed first (LowRankEmbedding), "
            f"but these are not: {plain}"
        )
    widths = {t.embedding_dim for t in tables}
    if len(widths) != 1:
        raise ValueError(
            f"cannot fold: the first MLP Linear reads F blocks of one width t, so all tables need the same "
            f"embedding_dim; got {sorted(widths)}"
        )
    return tables


def first_mlp_linear_name(model: nn.Module) -> str:
    """Dotted name of the nn.Linear that reads the embeddings (inside a LowRankLinear if compressed)."""
    name = layout_of(model, "folding").first_mlp_linear
    if not name:
        raise ValueError(f"{type(model).__name__}'s layout names no first MLP Linear (first_mlp_linear is None)")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"{type(model).__name__} has no {name!r}, the first MLP Linear its layout names"
        ) from None
    if isinstance(module, LowRankLinear):
        return name + ".first"
    if isinstance(module, nn.Linear):
        return name
    raise ValueError(f"{name!r} is a {type(module).__name__}, not an nn.Linear")


def fold_into_first_linear(model: nn.Module) -> PlanEntry:
    """Fold every field's ``k -> t`` projection into the first MLP Linear; the MLP then reads codes.

    Shapes: the first MLP Linear ``[out, F t + N]`` becomes ``[out, sum_i k_i + N]`` (``F`` fields,
    table width ``t``, field ``i``'s code width ``k_i``, ``N`` numeric features after the fields).

    Returns:
        The ``"fold"`` :class:`PlanEntry` (``shape`` = the old ``[out, F t + N]``).

    Raises:
        ValueError: before changing anything, if the model's MLP does not read the
            embeddings directly, a table is not factored, tables differ in ``t``, the first
            Linear's width is not ``F t + N``, or the model is already folded.
    """
    kind = get_kind(FoldKind.name)
    entry, folded = kind.build(model, "", None, 0, "", {})
    kind.install(model, entry, folded)
    return entry


class FoldKind(CompressionKind):
    """A model-level change: the first MLP Linear, widened to read codes; no method, no rank."""

    name = "fold"

    def build(self, model: nn.Module, name: str, stats: Any, rank: int, method: str,
              options: Mapping[str, Any]) -> tuple[PlanEntry, nn.Linear]:
        """The folded Linear and its entry (``name``, ``stats``, ``rank``, ``method``: unused; the layout says)."""
        tables = _check_foldable(model)
        name = first_mlp_linear_name(model)
        linear: nn.Linear = model.get_submodule(name)  # type: ignore[assignment]
        num_fields = len(tables)
        t = tables[0].embedding_dim
        ranks = [int(tab.code_dim) for tab in tables]
        out_features, in_features = linear.weight.shape
        num_numeric = in_features - num_fields * t
        if num_numeric < 0:
            raise ValueError(
                f"{name!r} reads {in_features} inputs, fewer than {num_fields} fields x {t} dims; "
                "it does not read the concatenated embeddings"
            )

        w = linear.weight.detach().to(torch.float64)
        blocks = w[:, : num_fields * t].reshape(out_features, num_fields, t)  # [out, F, t]
        # block i: [out, t] @ [t, k_i]; the k_i may differ, so one product per field
        new_blocks = torch.cat([blocks[:, i] @ tab.projection.weight.detach().to(w) for i, tab in enumerate(tables)],
                               dim=1)  # [out, sum_i k_i]
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

        folded = plain_linear(new_weight.shape[1], out_features, has_bias, linear.weight)
        with torch.no_grad():
            folded.weight.copy_(new_weight)
            if new_bias is not None:
                folded.bias.copy_(new_bias)
        flags = {"in_features": int(new_weight.shape[1]), "bias": bool(has_bias), "num_fields": num_fields,
                 "embedding_dim": int(t), "num_numeric": int(num_numeric)}
        # one code width for all fields as before (old plans hold it); per-field widths when they differ
        flags.update({"code_dim": ranks[0]} if len(set(ranks)) == 1 else {"code_dims": ranks})
        entry = PlanEntry(name=name, kind=self.name, method=None, rank=None, shape=[out_features, in_features],
                          flags=flags)
        return entry, folded

    def replay(self, model: nn.Module, entry: PlanEntry) -> nn.Linear:
        """The structure of a fold (weights unset) on a model whose tables are already factored."""
        _check_foldable(model)
        linear = model.get_submodule(entry.name)
        if not isinstance(linear, nn.Linear) or list(linear.weight.shape) != entry.shape:
            raise ValueError(
                f"cannot replay the fold of {entry.name!r}: expected an nn.Linear of weight {entry.shape}, "
                f"found {type(linear).__name__} {list(getattr(linear, 'weight', torch.empty(0)).shape)}"
            )
        return plain_linear(int(entry.flags["in_features"]), entry.shape[0], bool(entry.flags.get("bias", True)),
                            linear.weight)

    def install(self, model: nn.Module, entry: PlanEntry, module: nn.Module) -> None:
        super().install(model, entry, module)
        set_mlp_reads_codes(model, True)

    def is_applied(self, model: nn.Module, entry: PlanEntry) -> bool:
        return self.present(model)

    def structure(self, entry: PlanEntry) -> Structure:
        out_features, width = entry.shape[0], int(entry.flags["in_features"])
        bias = bool(entry.flags.get("bias", True))
        return Structure(parameters=out_features * (width + bias), multiply_adds=out_features * width,
                         biases={"bias": bias})

    # -- a model-level change: present or not, undone as a whole --------------------------------
    def present(self, model: nn.Module) -> bool:
        return mlp_reads_codes(model)

    def depends_on(self, module: nn.Module) -> bool:
        """Whether undoing ``module`` (a factored table) breaks the fold, which reads its codes."""
        return isinstance(module, LowRankEmbedding)

    def undo(self, model: nn.Module, state_dict: Mapping[str, Any]) -> None:
        """The first MLP Linear back at its unfolded width ``F t + N`` (it read ``sum_i k_i + N`` codes)."""
        name = first_mlp_linear_name(model)
        linear = get_submodule(model, name)
        tables = [get_submodule(model, n) for n in layout_of(model).field_tables]
        width = tables[0].embedding_dim
        in_features = linear.in_features - sum(t.code_dim for t in tables) + len(tables) * width
        bias = f"{name}.bias" in state_dict if state_dict else linear.bias is not None
        set_submodule(model, name, plain_linear(in_features, linear.out_features, bias, linear.weight))
        set_mlp_reads_codes(model, False)
