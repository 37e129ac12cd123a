"""The tensor-train embedding table (TT-Rec): a plain table for ``FieldEmbedding``, stored as cores.

A :class:`TTEmbedding` is a *plain* table for
:class:`lightning_afm.models.layers.embedding.FieldEmbedding`: it has ``embedding_dim`` and is
called as ``table(idx)``; it has no ``codes``/``project`` (nothing to fold into the MLP). The
maths (factors, ranks, initialisation, TT-SVD) is :mod:`lightning_afm.compress.ttd`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_afm.compress.registry import check_rank
from lightning_afm.compress.ttd import (
    DEFAULT_NUM_CORES,
    DEFAULT_TT_RANK,
    balanced_row_factors,
    check_tt_factors,
    sampled_gaussian_,
    tt_ranks_for,
    tt_rec_dim_factors,
    tt_svd,
)

__all__ = ["TTEmbedding"]

class TTEmbedding(nn.Module):
    """An ``s x t`` embedding table stored as tensor-train cores (TT-Rec); looks up only the rows asked for.

    Args:
        num_embeddings: ``s``, rows.
        embedding_dim: ``t``, the row width.
        tt_rank: ``R``; the TT-ranks are ``(1, R, ..., R, 1)`` clipped where the table's shape
            bounds them (:func:`tt_ranks_for`).
        row_factors: ``n_1..n_c`` with product ``>= s`` (default :func:`balanced_row_factors`).
        dim_factors: ``d_1..d_c`` with product ``== t`` (default :func:`tt_rec_dim_factors`).
        num_cores: ``c`` when the factors are left to default (3, as TT-Rec).
        padding_idx: as in ``nn.Embedding``: this row reads as zeros and gets no gradient.
        deduplicate: look each distinct index up once per batch (``torch.unique``) and
            scatter the rows back; same result, less work when ids repeat (Zipf-like CTR data).
        init_std: std of a table entry under the random initialisation (:func:`sampled_gaussian_`);
            1.0 matches ``nn.Embedding``'s ``N(0, 1)``.

    Shapes:
        ``forward(idx)``: ``[...]`` int64 in ``[0, s)`` -> ``[..., t]``.
        ``cores[k]``: ``[n_k, r_{k-1}, d_k, r_k]``.
        ``full_table()``: ``[s, t]`` (tests and small tables only: it builds every row).

    Example:
        >>> emb = TTEmbedding(1000, 16, tt_rank=4)
        >>> emb.row_factors, emb.dim_factors, emb.tt_ranks
        ([10, 10, 10], [2, 2, 4], [1, 4, 4, 1])
        >>> emb(torch.tensor([[0, 999], [5, 5]])).shape
        torch.Size([2, 2, 16])
        >>> emb.num_parameters, 1000 * 16
        (560, 16000)
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        tt_rank: int = DEFAULT_TT_RANK,
        row_factors: Sequence[int] | None = None,
        dim_factors: Sequence[int] | None = None,
        num_cores: int = DEFAULT_NUM_CORES,
        padding_idx: int | None = None,
        deduplicate: bool = True,
        init_std: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_rank(tt_rank, label="tt_rank")
        s, t = int(num_embeddings), int(embedding_dim)
        if s < 1 or t < 1:
            raise ValueError(f"a TT table needs >= 1 row and column, got {num_embeddings} x {embedding_dim}")
        if row_factors is None:
            row_factors = balanced_row_factors(s, num_cores if dim_factors is None else len(dim_factors))
        if dim_factors is None:
            dim_factors = tt_rec_dim_factors(t, len(row_factors))
        check_tt_factors(s, t, row_factors, dim_factors)
        if padding_idx is not None:
            if not -s <= int(padding_idx) < s:
                raise ValueError(f"padding_idx {padding_idx} is outside the {s} rows")
            padding_idx = int(padding_idx) % s
        self.num_embeddings = s
        self.embedding_dim = t
        self.tt_rank = int(tt_rank)
        self.row_factors = [int(x) for x in row_factors]
        self.dim_factors = [int(x) for x in dim_factors]
        self.tt_ranks = tt_ranks_for(self.row_factors, self.dim_factors, self.tt_rank)
        self.padding_idx = padding_idx
        self.deduplicate = bool(deduplicate)
        #: :attr:`TTDecomposition.relative_error` when built by :meth:`from_table`, else None.
        self.tt_svd_relative_error: float | None = None
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(n, r0, dk, r1, device=device, dtype=dtype))
            for n, dk, r0, r1 in zip(self.row_factors, self.dim_factors, self.tt_ranks[:-1], self.tt_ranks[1:])
        )
        # mixed-radix place values: i = sum_k i_k * stride_k, stride_k = n_{k+1} ... n_c
        self._strides = [math.prod(self.row_factors[k + 1 :]) for k in range(len(self.row_factors))]
        sampled_gaussian_(list(self.cores), init_std)

    # -- construction --------------------------------------------------------
    @classmethod
    def from_table(cls, weight: Tensor, tt_rank: int = DEFAULT_TT_RANK, **structure: Any) -> "TTEmbedding":
        """A train of rank ``tt_rank`` fitted to ``weight`` ``[s, t]`` by TT-SVD (:func:`tt_svd`).

        ``structure``: the constructor's ``row_factors``, ``dim_factors``, ``num_cores``,
        ``padding_idx`` and ``deduplicate`` (the rows, width, device and dtype are ``weight``'s,
        and the cores come from the decomposition, so ``init_std`` has no use).

        TT-SVD is quasi-optimal: its error is at most ``sqrt(c - 1)`` times that of the best
        train of the same ranks (Oseledets 2011, Theorem 2.2).

        Exact when ``tt_rank`` reaches every bound of :func:`tt_ranks_for`. Same dtype and
        device as ``weight``. The decomposition's error is kept as ``tt_svd_relative_error``.
        """
        if weight.dim() != 2:
            raise ValueError(f"weight must be a [rows, dim] table, got shape {tuple(weight.shape)}")
        taken = sorted(set(structure) & {"num_embeddings", "embedding_dim", "init_std", "device", "dtype"})
        if taken:
            raise TypeError(f"from_table takes {taken} from the table it decomposes; pass only row_factors, "
                            "dim_factors, num_cores, padding_idx or deduplicate")
        module = cls(weight.shape[0], weight.shape[1], tt_rank, device=weight.device, dtype=weight.dtype, **structure)
        decomposition = tt_svd(weight, module.row_factors, module.dim_factors, module.tt_rank)
        with torch.no_grad():
            for core, value in zip(module.cores, decomposition.cores):
                core.copy_(value)
        module.tt_svd_relative_error = decomposition.relative_error
        return module

    # -- sizes -----------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        """Elements in the cores: ``sum_k n_k r_{k-1} d_k r_k`` (the dense table has ``s t``)."""
        return sum(core.numel() for core in self.cores)

    @property
    def compression_ratio(self) -> float:
        """``s t`` over :attr:`num_parameters`."""
        return self.num_embeddings * self.embedding_dim / self.num_parameters

    # -- lookup ------------------------------------------------------------------
    def _check_range(self, low: Tensor, high: Tensor) -> None:
        lo, hi = int(low), int(high)
        if lo < 0 or hi >= self.num_embeddings:
            bad = lo if lo < 0 else hi
            raise IndexError(
                f"index {bad} is out of range for a TT table of {self.num_embeddings} rows "
                f"(ids must be in [0, {self.num_embeddings}))"
            )

    def rows(self, idx: Tensor) -> Tensor:
        """Rows of in-range indices, repeats allowed: ``[B]`` -> ``[B, t]`` (no dedup, no range check).

        Gathers slice ``i_k`` of each core and multiplies along the chain with batched
        matmuls, carrying ``[B, d_1 ... d_k, r_k]``.
        """
        b = idx.shape[0]
        out: Tensor | None = None
        for k, core in enumerate(self.cores):
            digit = torch.div(idx, self._strides[k], rounding_mode="floor") % self.row_factors[k]
            n_k, r0, d_k, r1 = core.shape
            # F.embedding: an indexed gather whose backward scatters into the core (dense grad)
            piece = F.embedding(digit, core.view(n_k, r0 * d_k * r1))  # [B, r_{k-1} d_k r_k]
            if out is None:
                out = piece.view(b, d_k, r1)  # r_0 = 1
            else:
                out = torch.bmm(out, piece.view(b, r0, d_k * r1)).view(b, -1, r1)
        return out.reshape(b, self.embedding_dim)  # r_c = 1

    def forward(self, idx: Tensor) -> Tensor:
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"TTEmbedding indices must be int64 (or int32), got {idx.dtype}")
        shape = idx.shape
        flat = idx.reshape(-1).long()
        if flat.numel() == 0:
            return self.cores[0].new_zeros(*shape, self.embedding_dim)
        if self.deduplicate:
            unique, inverse = torch.unique(flat, sorted=True, return_inverse=True)
            self._check_range(unique[0], unique[-1])
            out = self.rows(unique)[inverse]
        else:
            low, high = torch.aminmax(flat)
            self._check_range(low, high)
            out = self.rows(flat)
        if self.padding_idx is not None:
            out = out.masked_fill((flat == self.padding_idx).unsqueeze(1), 0.0)
        return out.view(*shape, self.embedding_dim)

    def full_table(self) -> Tensor:
        """The dense ``[s, t]`` table the cores represent (builds all ``N t`` entries: tests/small tables)."""
        acc = self.cores[0].new_ones(1, 1, 1)  # [rows so far, width so far, r]
        for core in self.cores:
            # [P, D, r] x [n, r, d, r'] -> [P, n, D, d, r'] -> [P n, D d, r']
            acc = torch.einsum("pDr,nrds->pnDds", acc, core)
            p, n, width, d, r = acc.shape
            acc = acc.reshape(p * n, width * d, r)
        table = acc[:, :, 0][: self.num_embeddings]
        if self.padding_idx is not None:
            table = table.clone()
            table[self.padding_idx] = 0
        return table

    def extra_repr(self) -> str:
        return (
            f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, tt_rank={self.tt_rank}, "
            f"row_factors={self.row_factors}, dim_factors={self.dim_factors}, tt_ranks={self.tt_ranks}"
            + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")
        )
