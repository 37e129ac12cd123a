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

import torch
from torch import nn

from lightning_afm.compress.modules import LowRankEmbedding

from .lookups import CalledFields, FactoredPart
from .sharing import Tensors


class _Projection(nn.Module):
    """One field's ``[t, k]`` weight and ``[t]`` bias (zeros where the Linear has none)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)


class BatchedProjection(nn.Module):
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
        out = codes.new_empty([codes.shape[0], codes.shape[1], weight.shape[1]])
        if not self.has_bias:
            return out.copy_(by_field.transpose(0, 1))
        return torch.add(by_field.transpose(0, 1), torch.stack(biases), out=out)


def plain_projection(table: nn.Module) -> nn.Linear | None:
    """The projection Linear of a table whose ``project`` is exactly that Linear (AFM/SVD's
    :class:`~lightning_afm.compress.modules.LowRankEmbedding`), else None."""

    if type(table) is LowRankEmbedding and type(table.projection) is nn.Linear:
        return table.projection
    return None


def build_projection(tables: Sequence[nn.Module], tensors: Tensors) -> nn.Module:
    """What turns the stacked codes of ``tables`` into ``t``-dim vectors: the identity when no table
    is factored, one batched product when all are plain-projection tables of one shape, else
    each table's own ``project``."""
    if not any(hasattr(t, "project") for t in tables):
        return nn.Identity()
    linears = [plain_projection(t) for t in tables]
    if all(p is not None for p in linears) and len({tuple(p.weight.shape) for p in linears}) == 1:
        biases = [p.bias if p.bias is not None else p.weight.new_zeros(p.weight.shape[0]) for p in linears]
        return BatchedProjection(
            [tensors.take(p.weight) for p in linears],
            [tensors.take(b) for b in biases],
            has_bias=any(p.bias is not None for p in linears),
        )
    projections = [FactoredPart(tensors.frozen(t), "project") if hasattr(t, "project") else nn.Identity() for t in tables]
    return CalledFields(projections, field_dim=1)
