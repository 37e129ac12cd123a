"""Every field's projection ``codes -> t``-dim vectors, as one batched product where possible.

The training model projects field by field (one small Linear per factored table, stacked).
Here all projections run as one ``[F, B, k] x [F, k, t]`` batched product, and the bias add
doubles as the copy into a contiguous ``[B, F, t]`` tensor, so consumers that flatten the fields
(the cross networks' ``x_0``, attention's Linears) read it without another transposing copy.
(Writing the products straight into the strided ``[B, F, t]`` layout instead takes one gemm per
field, each a parallel region that stalls whenever another process holds a core.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Tuple

import torch
from torch import nn

from lightning_afm.compress.modules import LowRankEmbedding

from .lookups import CalledFields, FactoredPart, code_widths
from .sharing import Tensors
from .tracing import TraceAware


class _Projection(nn.Module):
    """One field's ``[t, k]`` weight and ``[t]`` bias (zeros where the Linear has none)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)


class BatchedProjection(TraceAware):
    """``[B, F, k]`` codes -> ``[B, F, t]``, equal to each field's ``projection(codes[:, i])`` stacked.

    The ``[F, t, k]`` weight is stacked from the shared per-field weights on every call
    (``F t k`` numbers: nothing next to the product), so it always reads their current values.
    """

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], has_bias: bool) -> None:
        super().__init__()
        self.fields = nn.ModuleList(_Projection(w, b) for w, b in zip(weights, biases))
        self.has_bias = bool(has_bias)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        weights: list[torch.Tensor] = []
        biases: list[torch.Tensor] = []
        for field in self.fields:
            weights.append(field.weight)
            biases.append(field.bias)
        weight = torch.stack(weights)  # [F, t, k]
        by_field = torch.bmm(codes.transpose(0, 1), weight.transpose(1, 2))  # [F, B, t]
        if not torch.jit.is_scripting() and self._exporting():  # no out=: the same sum, a fresh tensor
            by_batch = by_field.transpose(0, 1)
            return by_batch + torch.stack(biases) if self.has_bias else by_batch.contiguous()
        out = codes.new_empty([codes.shape[0], codes.shape[1], weight.shape[1]])
        if not self.has_bias:
            return out.copy_(by_field.transpose(0, 1))
        return torch.add(by_field.transpose(0, 1), torch.stack(biases), out=out)


class _RankGroup(nn.Module):
    """The fields of one code width ``k``: their columns in the ``[B, sum_i k_i]`` codes, their
    positions among the ``F`` fields, and their projections as one :class:`BatchedProjection`."""

    def __init__(self, fields: Sequence[int], columns: Sequence[int], weights: Sequence[torch.Tensor],
                 biases: Sequence[torch.Tensor], has_bias: bool) -> None:
        super().__init__()
        self.register_buffer("field_index", torch.tensor(list(fields), dtype=torch.long), persistent=False)
        self.register_buffer("column_index", torch.tensor(list(columns), dtype=torch.long), persistent=False)
        self.projection = BatchedProjection(weights, biases, has_bias)
        self.count = len(fields)
        self.width = int(weights[0].shape[1])

    def forward(self, codes: torch.Tensor, out: torch.Tensor) -> None:
        mine = codes.index_select(1, self.column_index).view(codes.shape[0], self.count, self.width)  # [B, n, k]
        out.index_copy_(1, self.field_index, self.projection(mine))


class GroupedProjection(nn.Module):
    """``[B, sum_i k_i]`` codes (fields of different ranks) -> ``[B, F, t]``: one batched product per
    distinct rank, each written into its fields' slots; equal to each field's projection stacked.
    A budget gives few distinct ranks, so a few products replace ``F`` small ones.
    """

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], has_bias: bool) -> None:
        super().__init__()
        widths = [int(w.shape[1]) for w in weights]
        offsets = [sum(widths[:i]) for i in range(len(widths))]
        groups = []
        for k in sorted(set(widths)):
            fields = [i for i, w in enumerate(widths) if w == k]
            columns = [offsets[i] + j for i in fields for j in range(k)]
            groups.append(_RankGroup(fields, columns, [weights[i] for i in fields], [biases[i] for i in fields],
                                     has_bias))
        self.groups = nn.ModuleList(groups)
        self.num_fields = len(weights)
        self.out_width = int(weights[0].shape[0])

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        out = codes.new_empty([codes.shape[0], self.num_fields, self.out_width])
        for group in self.groups:
            group(codes, out)
        return out


def plain_projection(table: nn.Module) -> nn.Linear | None:
    """The projection Linear of a table whose ``project`` is exactly that Linear (AFM/SVD's
    :class:`~lightning_afm.compress.modules.LowRankEmbedding`), else None."""

    if type(table) is LowRankEmbedding and type(table.projection) is nn.Linear:
        return table.projection
    return None


def plain_projections(tables: Sequence[nn.Module], tensors: Tensors) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """Each table's projection weight ``[t, k_i]`` and bias ``[t]`` (zeros where the Linear has
    none), taken through ``tensors``, when every table is a plain-projection factored table
    (:func:`plain_projection`) into one width ``t`` (ranks may differ); else None. What the
    code-space forms (FM, DCN's cross logit, AutoInt's first layer) are built from."""
    linears = [plain_projection(t) for t in tables]
    if not linears or any(p is None for p in linears) or len({p.weight.shape[0] for p in linears}) != 1:
        return None
    biases = [p.bias if p.bias is not None else p.weight.new_zeros(p.weight.shape[0]) for p in linears]
    return [tensors.take(p.weight) for p in linears], [tensors.take(b) for b in biases]


def build_projection(tables: Sequence[nn.Module], tensors: Tensors) -> nn.Module:
    """What turns the stacked codes of ``tables`` into ``t``-dim vectors: the identity when no table
    is factored, one batched product when all are plain-projection tables of one shape, else
    each table's own ``project``. Tables of different ranks (a budgeted compression) read
    ``[B, sum_i k_i]`` codes: one batched product per rank (:class:`GroupedProjection`)."""
    if not any(hasattr(t, "project") for t in tables):
        return nn.Identity()
    widths = code_widths(tables)
    uniform = len(set(widths)) == 1
    linears = [plain_projection(t) for t in tables]
    if all(p is not None for p in linears) and len({p.weight.shape[0] for p in linears}) == 1:
        biases = [p.bias if p.bias is not None else p.weight.new_zeros(p.weight.shape[0]) for p in linears]
        build = BatchedProjection if uniform else GroupedProjection
        return build(
            [tensors.take(p.weight) for p in linears],
            [tensors.take(b) for b in biases],
            has_bias=any(p.bias is not None for p in linears),
        )
    projections = [FactoredPart(tensors.frozen(t), "project") if hasattr(t, "project") else nn.Identity() for t in tables]
    return CalledFields(projections, field_dim=1, code_widths=None if uniform else widths)


class X0Columns(nn.Module):
    """A Linear map on ``x_0`` read off ``x_0`` itself: ``C`` ``[D, O]`` -> ``(C, 0)`` (weight, offset)."""

    def forward(self, columns: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return columns, columns.new_zeros(columns.shape[1])


class CodeColumns(nn.Module):
    """A Linear map on ``x_0 = [e_1, ..., e_F, numeric]`` read off ``[c_1, ..., c_F, numeric]``
    (``[B, sum_i k_i + N]``) instead: ``C`` ``[F d + N, O]`` -> ``([P_1^T C_1; ...; P_F^T C_F; C_N],
    sum_i p_i^T C_i)`` (weight ``[sum_i k_i + N, O]``, offset ``[O]``), so that
    ``x_0 C = codes_and_numeric @ weight + offset`` exactly, since ``e_i = P_i c_i + p_i``.

    Built from each field's projection weight ``P_i`` ``[d, k_i]`` and bias ``p_i`` ``[d]``
    (shared, read on every call: ``sum_i k_i d O`` multiply-adds); ranks may differ between fields.
    What DCN's cross logit (:mod:`.cross_v1`) and the first cross layer of DCNv2 and GDCN
    (:mod:`.cross`) are computed from.
    """

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> None:
        super().__init__()
        if not weights or len(weights) != len(biases):
            raise ValueError(f"one bias per projection weight needed, got {len(weights)} weights, {len(biases)} biases")
        dims = {int(w.shape[0]) for w in weights}
        if len(dims) != 1:
            raise ValueError(f"every field must project to one width d, got widths {sorted(dims)}")
        self.fields = nn.ModuleList(_Projection(w, b) for w, b in zip(weights, biases))
        widths = [int(w.shape[1]) for w in weights]
        # the field of every code column, to pick its rows C_i of C for P_i^T C_i (fields of mixed ranks)
        owner = [i for i, k in enumerate(widths) for _ in range(k)]
        self.register_buffer("owner", torch.tensor(owner, dtype=torch.long), persistent=False)
        self.dim = dims.pop()
        self.num_fields = len(weights)
        self.code_width = sum(widths)
        # one rank: P_i^T C_i for all fields as one [F, k, d] x [F, d, O] product, with no copy of C_i per code
        self.uniform = len(set(widths)) == 1

    def forward(self, columns: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        weights: list[torch.Tensor] = []
        biases: list[torch.Tensor] = []
        for field in self.fields:
            weights.append(field.weight.t())
            biases.append(field.bias)
        embedded = self.num_fields * self.dim
        by_field = columns[:embedded].reshape(self.num_fields, self.dim, columns.shape[1])  # C_i, [F, d, O]
        if self.uniform:
            code_rows = torch.bmm(torch.stack(weights), by_field).reshape(self.code_width, columns.shape[1])
        else:
            codes_t = torch.cat(weights)  # [sum k, d]: P_i^T stacked
            code_rows = torch.bmm(codes_t.unsqueeze(1), by_field.index_select(0, self.owner)).squeeze(1)  # [sum k, O]
        offset = torch.bmm(torch.stack(biases).unsqueeze(1), by_field).sum(0).squeeze(0)  # sum_i p_i^T C_i
        return torch.cat([code_rows, columns[embedded:]]), offset


def build_code_columns(tables: Sequence[nn.Module], embedding_dim: int, tensors: Tensors) -> CodeColumns | None:
    """:class:`CodeColumns` when every table is a factored table whose projection is a plain Linear
    into ``embedding_dim`` (AFM/SVD's; per-field ranks allowed), else None (read ``x_0``)."""
    projections = plain_projections(tables, tensors)
    if projections is None or projections[0][0].shape[0] != embedding_dim:
        return None
    return CodeColumns(*projections)
