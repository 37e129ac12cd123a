"""Factored modules that replace a Linear layer or an embedding table after compression.

One plain forward each; the batched structures for inference (all fields' projections in one
product, the ReLU between the factors in place) are built by
:func:`lightning_afm.inference.optimize_for_inference`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_afm.compress.factorize import EmbeddingFactors, LinearFactors
from lightning_afm.compress.registry import check_rank

__all__ = ["LowRankLinear", "LowRankEmbedding", "stack_projections", "project_fields"]


def _rows_reading(weight: Tensor, k: int, name: str, rows: str, context: str) -> int:
    """The rows of ``weight``, checked to be a ``[rows, k]`` factor reading ``k`` values (``context`` says whose)."""
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"{name} must be [{rows}, {k}] {context}, got {tuple(weight.shape)}")
    return weight.shape[0]


def _load_linear(layer: nn.Linear, weight: Tensor, bias: Tensor | None) -> None:
    """Copy ``weight`` ``[out, in]`` and ``bias`` ``[out]`` (None: the layer has none) into ``layer``."""
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)


class LowRankLinear(nn.Module):
    """Two Linears ``n -> k -> m`` (optionally with a ReLU between) in place of one ``n -> m``.

    Args:
        in_features: ``n``.
        out_features: ``m``.
        rank: ``k``.
        relu: put a ReLU between the factors (the paper's AFM default for MLP layers).
        first_bias: whether ``first`` has a bias (AFM: yes; SVD: no).
        second_bias: whether ``second`` has a bias.

    Shapes:
        ``x``: ``[..., n]`` -> ``[..., m]``; ``first.weight`` ``[k, n]``, ``second.weight`` ``[m, k]``.

    Example:
        >>> layer = LowRankLinear(8, 6, rank=2, relu=True)
        >>> layer(torch.zeros(5, 8)).shape
        torch.Size([5, 6])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        relu: bool = False,
        first_bias: bool = True,
        second_bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_rank(int(rank), min(in_features, out_features), f"a {in_features} -> {out_features} layer")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.rank = int(rank)
        self.relu = bool(relu)
        self.first = nn.Linear(self.in_features, self.rank, bias=first_bias, device=device, dtype=dtype)
        self.second = nn.Linear(self.rank, self.out_features, bias=second_bias, device=device, dtype=dtype)

    @classmethod
    def from_factors(cls, factors: LinearFactors, relu: bool = False) -> "LowRankLinear":
        """Build the module holding ``factors`` (see :class:`LinearFactors` for the shapes)."""
        k, n = factors.first_weight.shape
        m = _rows_reading(factors.second_weight, k, "second_weight", "m", f"to follow a first_weight of [{k}, {n}]")
        w = factors.first_weight
        layer = cls(n, m, k, relu=relu, first_bias=factors.first_bias is not None,
                    second_bias=factors.second_bias is not None, device=w.device, dtype=w.dtype)
        _load_linear(layer.first, factors.first_weight, factors.first_bias)
        _load_linear(layer.second, factors.second_weight, factors.second_bias)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        h = self.first(x)
        if self.relu:
            h = torch.relu(h)
        return self.second(h)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, relu={self.relu}"
        )


class LowRankEmbedding(nn.Module):
    """A ``k``-dim table plus a ``k -> t`` projection, in place of a ``t``-dim table.

    Implements the factored-table protocol of
    :class:`lightning_afm.models.layers.embedding.FieldEmbedding`: models call ``codes`` then
    ``project``, so the MLP can read the small codes directly once the projection is folded into
    its first Linear, while interaction layers still get ``t``-dim vectors.

    Args:
        num_embeddings: ``s``, rows.
        embedding_dim: ``t``, the width the model expects.
        code_dim: ``k``, the width stored.
        projection_bias: whether the projection has a bias (AFM: yes; SVD: no).
        padding_idx, sparse: passed to the ``k``-dim table, carried over from the replaced
            ``nn.Embedding`` so its row stays untrained / its gradients stay sparse.

    Shapes:
        ``codes(idx)``: ``[...]`` int64 -> ``[..., k]``;
        ``project(c)``: ``[..., k]`` -> ``[..., t]``; ``forward(idx)`` = ``project(codes(idx))``.
        ``table.weight`` ``[s, k]``, ``projection.weight`` ``[t, k]``, ``projection.bias`` ``[t]``.

    Example:
        >>> emb = LowRankEmbedding(10, embedding_dim=16, code_dim=2)
        >>> emb.codes(torch.tensor([1, 2])).shape, emb(torch.tensor([1, 2])).shape
        (torch.Size([2, 2]), torch.Size([2, 16]))
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        code_dim: int,
        projection_bias: bool = True,
        padding_idx: int | None = None,
        sparse: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_rank(int(code_dim), int(embedding_dim), f"embedding_dim {embedding_dim}", label="code_dim")
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.code_dim = int(code_dim)
        self.table = nn.Embedding(
            self.num_embeddings, self.code_dim, padding_idx=padding_idx, sparse=sparse, device=device, dtype=dtype
        )
        self.projection = nn.Linear(self.code_dim, self.embedding_dim, bias=projection_bias, device=device, dtype=dtype)

    @classmethod
    def from_factors(
        cls, factors: EmbeddingFactors, padding_idx: int | None = None, sparse: bool = False
    ) -> "LowRankEmbedding":
        """Build the module holding ``factors`` (see :class:`EmbeddingFactors` for the shapes)."""
        s, k = factors.table.shape
        t = _rows_reading(factors.projection_weight, k, "projection_weight", "t", f"for a table of [{s}, {k}]")
        module = cls(s, t, k, projection_bias=factors.projection_bias is not None, padding_idx=padding_idx,
                     sparse=sparse, device=factors.table.device, dtype=factors.table.dtype)
        with torch.no_grad():
            module.table.weight.copy_(factors.table)
        _load_linear(module.projection, factors.projection_weight, factors.projection_bias)
        return module

    def codes(self, idx: Tensor) -> Tensor:
        return self.table(idx)

    def project(self, codes: Tensor) -> Tensor:
        return self.projection(codes)

    def forward(self, idx: Tensor) -> Tensor:
        return self.project(self.codes(idx))

    def extra_repr(self) -> str:
        return (
            f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, "
            f"code_dim={self.code_dim}, projection_bias={self.projection.bias is not None}"
        )


def stack_projections(tables: Sequence[LowRankEmbedding]) -> tuple[Tensor, Tensor | None]:
    """The per-field projections of ``F`` factored tables stacked for one batched product.

    Returns ``weight`` ``[F, t, k]`` and ``bias`` ``[F, t]`` (None if no table has a bias;
    zeros for the tables without one). Needs every table to share ``t`` and ``k``.
    Stacking keeps the autograd graph, so gradients reach each table's own parameters.
    """
    if not tables:
        raise ValueError("stack_projections needs at least one table")
    shapes = {(int(t.embedding_dim), int(t.code_dim)) for t in tables}
    if len(shapes) != 1:
        raise ValueError(f"tables must share embedding_dim and code_dim to be stacked, got {sorted(shapes)}")
    weight = torch.stack([t.projection.weight for t in tables])
    if all(t.projection.bias is None for t in tables):
        return weight, None
    bias = torch.stack(
        [t.projection.bias if t.projection.bias is not None else weight.new_zeros(weight.shape[1]) for t in tables]
    )
    return weight, bias


def project_fields(codes: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """All fields' projections in one batched product: ``[B, F, k]`` -> ``[B, F, t]``.

    ``weight`` ``[F, t, k]`` and ``bias`` ``[F, t]`` as from :func:`stack_projections`; equals
    ``stack([tables[i].project(codes[:, i]) for i in range(F)], dim=1)`` with one batched
    kernel instead of ``F`` small ones (a transposed view of the ``[F, B, t]`` product).

    Example:
        >>> tables = [LowRankEmbedding(5, 4, 2) for _ in range(3)]
        >>> codes = torch.randn(6, 3, 2)
        >>> with torch.no_grad():
        ...     out = project_fields(codes, *stack_projections(tables))
        ...     loop = torch.stack([t.project(codes[:, i]) for i, t in enumerate(tables)], 1)
        >>> out.shape, torch.allclose(out, loop, atol=1e-6)
        (torch.Size([6, 3, 4]), True)
    """
    # [F, B, k] @ [F, k, t] -> [F, B, t]: one batched product over the field dimension
    out = torch.bmm(codes.transpose(0, 1), weight.transpose(1, 2)).transpose(0, 1)
    return out if bias is None else out + bias
