"""Tensor-train (TT-Rec) embedding tables: the TTD baseline of the paper's Table 4.

TT-Rec (Yin, Acun, Wu and Liu, MLSys 2021) stores an ``s x t`` table as ``c`` small cores.
Pad the rows to ``N = n_1 ... n_c >= s`` and split the width ``t = d_1 ... d_c``; row ``i``
with mixed-radix digits ``(i_1, ..., i_c)`` (``i = (i_1 n_2 + i_2) n_3 + i_3`` for ``c = 3``) is::

    W[i, :] = vec( G_1[i_1] G_2[i_2] ... G_c[i_c] )      G_k[i_k]: [r_{k-1}, d_k, r_k]

a chain of matrix products over the TT-ranks ``(1, r_1, ..., r_{c-1}, 1)`` whose free
``d_k`` indices, read row-major, give the ``t`` columns. A lookup gathers one slice per core
and multiplies them, so a batch costs ``O(B t r^2)`` and the full table is never built.

The cores are either drawn at random (TT-Rec's Gaussian initialisation at TT-Rec's scale
``1 / sqrt(3 s)``, see :func:`sampled_gaussian_` and :func:`tt_rec_init_std`: the paper's TTD,
which follows TT-Rec's settings, line 737-738) or computed from a trained table by TT-SVD
(:func:`tt_svd`, Oseledets 2011): sequential truncated SVDs of the table reshaped as the tensor
``[n_1 d_1, n_2 d_2, ..., n_c d_c]``.

As TT-Rec, only the large tables become trains (:func:`select_tt_tables`, ``>= 10^5`` rows by
default), the width-1 LR tables of those fields included; the small ones stay dense.

A :class:`TTEmbedding` is a *plain* table for
:class:`lightning_afm.models.layers.embedding.FieldEmbedding`: it has ``embedding_dim`` and is
called as ``table(idx)``; it has no ``codes``/``project`` (nothing to fold into the MLP).
Plan entries have kind ``"tt_embedding"`` and method ``"ttd"``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_afm.compress.plan import PlanEntry

__all__ = [
    "DEFAULT_TT_RANK",
    "DEFAULT_NUM_CORES",
    "DEFAULT_TT_MIN_ROWS",
    "TT_INITS",
    "TTDecomposition",
    "TTEmbedding",
    "balanced_row_factors",
    "balanced_dim_factors",
    "tt_rec_dim_factors",
    "tt_rec_init_std",
    "select_tt_tables",
    "tt_ranks_for",
    "tt_svd",
    "sampled_gaussian_",
    "build_tt_embedding",
    "compress_embedding_ttd",
    "compress_embeddings_ttd",
    "replay_tt_embedding",
]

#: TT-rank of the paper's TTD baseline (TT-Rec's default as well).
DEFAULT_TT_RANK = 16
#: Number of cores; TT-Rec uses 3.
DEFAULT_NUM_CORES = 3
#: How :func:`compress_embedding_ttd` sets the cores.
TT_INITS = ("svd", "random")
#: Tables with fewer rows stay dense (:func:`select_tt_tables`). TT-Rec compresses only the large
#: tables; at 10^5 that is Criteo's 7 largest (TT-Rec's Kaggle setting) and Avazu's 2
#: (device_id, device_ip), which gives the parameter counts nearest the paper's Table 4
#: (line 715: 3.76M / 12.21M; see ``benchmarks/param_counts.py``).
DEFAULT_TT_MIN_ROWS = 100_000
#: Draws beyond this many standard deviations are redrawn (see :func:`sampled_gaussian_`).
_TRUNCATE_AT = 2.0


# --------------------------------------------------------------------------- shapes


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def balanced_row_factors(num_embeddings: int, num_cores: int = DEFAULT_NUM_CORES) -> list[int]:
    """``num_cores`` near-equal factors whose product is ``>= num_embeddings`` (rows are zero-padded).

    Each factor is the ``c``-th root, rounded up, of the rows still to cover, which keeps the
    padding small (1,000,000 -> [100, 100, 100]; 1,000,001 -> [101, 100, 100]).

    Example:
        >>> balanced_row_factors(1000), balanced_row_factors(30)
        ([10, 10, 10], [4, 3, 3])
    """
    s, c = int(num_embeddings), int(num_cores)
    if s < 1:
        raise ValueError(f"num_embeddings must be >= 1, got {num_embeddings}")
    if c < 2:
        raise ValueError(f"a tensor train needs at least 2 cores, got num_cores={num_cores}")
    factors: list[int] = []
    remaining = s
    for k in range(c):
        left = c - k
        f = max(1, math.ceil(remaining ** (1.0 / left) - 1e-9))
        while f**left < remaining:  # guard against the float root landing just below
            f += 1
        factors.append(f)
        remaining = -(-remaining // f)  # ceil division: rows the later cores must cover
    return factors


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def balanced_dim_factors(embedding_dim: int, num_cores: int = DEFAULT_NUM_CORES) -> list[int]:
    """``num_cores`` factors of ``embedding_dim`` (exact product), as equal as its primes allow, ascending.

    Ascending because the lookup contracts left to right: small leading widths keep the
    intermediate products ``[B, d_1 ... d_k, r]`` small (16 -> [2, 2, 4]).

    Example:
        >>> balanced_dim_factors(16), balanced_dim_factors(50), balanced_dim_factors(7)
        ([2, 2, 4], [2, 5, 5], [1, 1, 7])
    """
    t, c = int(embedding_dim), int(num_cores)
    if t < 1:
        raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
    if c < 2:
        raise ValueError(f"a tensor train needs at least 2 cores, got num_cores={num_cores}")
    factors = [1] * c
    for p in sorted(_prime_factors(t), reverse=True):  # largest primes first, each onto the smallest factor
        factors[factors.index(min(factors))] *= p
    return sorted(factors)


def tt_rec_dim_factors(embedding_dim: int, num_cores: int = DEFAULT_NUM_CORES) -> list[int]:
    """:func:`balanced_dim_factors` laid out for the fewest parameters: the largest two at the ends.

    Core ``k`` has ``n_k r_{k-1} d_k r_k`` entries; the end cores carry one TT-rank
    (``r_0 = r_c = 1``) and the inner ones two, so the small width factors belong inside. For
    three cores at rank 16 this is ``[5, 2, 5]`` for width 50 (a 6.7M-row table: 127k entries
    against 263k for ``[2, 5, 5]``) and ``[2, 2, 4]`` for 16 (already inner-small). The default
    of :class:`TTEmbedding`; the counts it gives are the nearest to the paper's Table 4.

    Example:
        >>> tt_rec_dim_factors(16), tt_rec_dim_factors(50), tt_rec_dim_factors(1), tt_rec_dim_factors(8, 2)
        ([2, 2, 4], [5, 2, 5], [1, 1, 1], [2, 4])
    """
    factors = balanced_dim_factors(embedding_dim, num_cores)  # ascending
    if len(factors) == 2:
        return factors
    return [factors[-2], *factors[:-2], factors[-1]]


def tt_rec_init_std(num_embeddings: int) -> float:
    """TT-Rec's target std of a table entry under random initialisation: ``1 / sqrt(3 s)``.

    TT-Rec (and DLRM, whose tables it replaces) draws an ``s``-row table from
    ``U(-1/sqrt(s), 1/sqrt(s))``, of variance ``1 / (3 s)``; its sampled-Gaussian cores are
    scaled so the product has that variance (:func:`sampled_gaussian_`).

    Example:
        >>> round(tt_rec_init_std(1_000_000), 7)
        0.0005774
    """
    s = int(num_embeddings)
    if s < 1:
        raise ValueError(f"num_embeddings must be >= 1, got {num_embeddings}")
    return 1.0 / math.sqrt(3.0 * s)


def tt_ranks_for(row_factors: Sequence[int], dim_factors: Sequence[int], tt_rank: int) -> list[int]:
    """TT-ranks ``[1, r_1, ..., r_{c-1}, 1]``: ``r_k = min(R, r_{k-1} n_k d_k, n_{k+1} d_{k+1} ... n_c d_c)``.

    A rank above those bounds adds parameters but no expressive power (the ``k``-th unfolding
    has no more independent rows or columns), so it is clipped; at ``R >= max bound`` the
    train can represent any table exactly.

    Example:
        >>> tt_ranks_for([100, 100, 100], [2, 2, 4], 16), tt_ranks_for([4, 3, 3], [2, 2, 2], 64)
        ([1, 16, 16, 1], [1, 8, 6, 1])
    """
    if not isinstance(tt_rank, int) or isinstance(tt_rank, bool) or tt_rank < 1:
        raise ValueError(f"tt_rank must be a positive int, got {tt_rank!r}")
    modes = [int(n) * int(d) for n, d in zip(row_factors, dim_factors)]
    ranks = [1]
    for k in range(len(modes) - 1):
        ranks.append(min(int(tt_rank), ranks[-1] * modes[k], _prod(modes[k + 1 :])))
    ranks.append(1)
    return ranks


def _check_factors(
    num_embeddings: int, embedding_dim: int, row_factors: Sequence[int], dim_factors: Sequence[int]
) -> None:
    if len(row_factors) != len(dim_factors) or len(row_factors) < 2:
        raise ValueError(
            f"row_factors {list(row_factors)} and dim_factors {list(dim_factors)} must have the same "
            "length, at least 2 (one entry per core)"
        )
    if any(int(f) < 1 for f in (*row_factors, *dim_factors)):
        raise ValueError(f"factors must be >= 1, got rows {list(row_factors)}, dims {list(dim_factors)}")
    if _prod(row_factors) < num_embeddings:
        raise ValueError(
            f"row_factors {list(row_factors)} multiply to {_prod(row_factors)}, fewer than the "
            f"{num_embeddings} rows; use factors whose product is >= num_embeddings (or leave them None)"
        )
    if _prod(dim_factors) != embedding_dim:
        raise ValueError(
            f"dim_factors {list(dim_factors)} multiply to {_prod(dim_factors)}, not embedding_dim "
            f"{embedding_dim}; their product must equal it exactly (or leave them None)"
        )


# --------------------------------------------------------------------------- initialisation


def _truncated_normal_variance(a: float) -> float:
    """Variance of a standard normal truncated to ``[-a, a]``."""
    pdf = math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    return 1.0 - 2.0 * a * pdf / math.erf(a / math.sqrt(2.0))


def sampled_gaussian_(cores: Sequence[Tensor], target_std: float) -> None:
    """Fill ``cores`` in place (TT-Rec's Gaussian initialisation) so a table entry has std ``target_std``.

    An entry of the product is ``sum_{a, b} G_1[., a] G_2[a, ., b] G_3[b, .]``: a sum of
    ``r_1 r_2`` products of independent zero-mean draws, so its variance is
    ``r_1 r_2 ... r_{c-1} * sigma^(2c)`` when every core entry has variance ``sigma^2``.
    TT-Rec observed that drawing cores as a dense table would be drawn (e.g. with its
    uniform init) gives a product whose scale grows or vanishes with the ranks, and that
    Gaussian cores scaled to give the product the variance of the replaced table's
    initialisation train as well as the uncompressed table; so ``sigma`` is solved from
    ``r_1 ... r_{c-1} sigma^(2c) = target_std^2``. Draws beyond 2 ``sigma`` are redrawn
    (``trunc_normal_``) so that no single extreme draw dominates a product, and the
    scale is corrected for the variance the truncation removes.

    ``cores``: ``[n_k, r_{k-1}, d_k, r_k]`` each.
    """
    if not target_std > 0 or not math.isfinite(target_std):
        raise ValueError(f"target_std must be a positive finite number, got {target_std!r}")
    c = len(cores)
    bond = _prod([core.shape[3] for core in cores[:-1]])
    sigma = (target_std**2 / bond) ** (1.0 / (2 * c))
    std = sigma / math.sqrt(_truncated_normal_variance(_TRUNCATE_AT))
    with torch.no_grad():
        for core in cores:
            nn.init.trunc_normal_(core, mean=0.0, std=std, a=-_TRUNCATE_AT * std, b=_TRUNCATE_AT * std)


@dataclass
class TTDecomposition:
    """The result of :func:`tt_svd`.

    Attributes:
        cores: ``c`` tensors ``[n_k, r_{k-1}, d_k, r_k]``.
        discarded: the squared singular values dropped at each of the ``c - 1`` truncations
            (summed per step). The cores are left-orthogonal, so the squared Frobenius error
            of the train against the zero-padded ``[N, t]`` table is exactly their sum (each
            step's error is orthogonal to the rest). The ``s`` real rows carry part of it;
            the train's padding rows (never looked up) may carry the rest.
        norm: Frobenius norm of the table.
    """

    cores: list[Tensor]
    discarded: list[float]
    norm: float

    @property
    def error(self) -> float:
        """``||W_padded - W_TT||_F``: an upper bound on the error over the real rows."""
        return math.sqrt(sum(self.discarded))

    @property
    def relative_error(self) -> float:
        """:attr:`error` over ``||W||_F`` (0 for an all-zero table)."""
        return self.error / self.norm if self.norm > 0 else 0.0


def _truncate(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor, float]:
    """Rank-``r`` truncation of ``matrix`` ``[m, n]``: ``U_r`` ``[m, r]``, ``U_r^T M`` ``[r, n]``, dropped energy.

    The dropped energy is the sum of the squared singular values past ``r``. A table's first
    unfolding is very wide (``[432, 371,520]`` for 10M rows x 16), where an SVD costs minutes;
    its left singular vectors are the eigenvectors of the small ``[m, m]`` Gram matrix, one
    GEMM away. Squaring loses accuracy only in singular values below ~1e-8 of the largest,
    which the projection ``U_r U_r^T M`` does not need (``U_r`` stays orthonormal).
    """
    m, n = matrix.shape
    if n >= 4 * m:
        gram = matrix @ matrix.T
        with _single_threaded():
            eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
        u = eigenvectors[:, m - rank :].flip(1)
        dropped = float(eigenvalues[: m - rank].clamp_min(0).sum())
        return u, u.T @ matrix, dropped
    with _single_threaded():
        u, sv, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank], sv[:rank, None] * vh[:rank], float(sv[rank:].pow(2).sum())


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run the small LAPACK calls on one thread.

    Measured on a 2-core machine with other work running: a 200 x 200 ``eigh`` took 3.2 s on
    2 OpenMP threads and 0.01 s on one (the threads spin-wait for each other), a
    3200 x 400 SVD 9.1 s against 0.3 s. These matrices are at most a few thousand wide, so
    one thread costs little when the machine is idle. The large GEMMs stay multi-threaded.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tt_svd(
    weight: Tensor,
    row_factors: Sequence[int],
    dim_factors: Sequence[int],
    tt_rank: int,
    balance: bool = True,
) -> TTDecomposition:
    """TT-SVD of a table: sequential truncated SVDs (Oseledets 2011), in float64.

    ``weight`` ``[s, t]`` is zero-padded to ``[N, t]`` (``N = prod(row_factors)``), viewed as
    ``[n_1, ..., n_c, d_1, ..., d_c]`` and permuted to ``[n_1, d_1, ..., n_c, d_c]``. Step ``k``
    takes the SVD of the ``[r_{k-1} n_k d_k, rest]`` remainder, keeps ``r_k`` left singular
    vectors ``U`` as core ``k`` and carries ``U^T (remainder) = S V^T`` on. Ranks are
    :func:`tt_ranks_for`. Wide remainders go through their Gram matrix (:func:`_truncate`).

    ``balance``: rescale the cores to equal Frobenius norms (the product is unchanged). TT-SVD
    leaves cores ``1..c-1`` orthonormal and the whole scale in the last core, which makes
    their gradients and Adam's per-parameter steps very uneven when the train is finetuned.

    Returns:
        :class:`TTDecomposition` with cores in ``weight``'s dtype and device.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be a [rows, dim] table, got shape {tuple(weight.shape)}")
    s, t = weight.shape
    _check_factors(s, t, row_factors, dim_factors)
    c = len(row_factors)
    ranks = tt_ranks_for(row_factors, dim_factors, tt_rank)
    n = [int(x) for x in row_factors]
    d = [int(x) for x in dim_factors]

    # one float64 copy, zero-padded in place (a 10M-row table is 1.3 GB at this precision)
    padded = torch.zeros(_prod(n), t, dtype=torch.float64, device=weight.device)
    padded[:s].copy_(weight.detach())
    # [n_1..n_c, d_1..d_c] -> [n_1, d_1, ..., n_c, d_c]: core k owns the pair (n_k, d_k)
    order = [i for k in range(c) for i in (k, c + k)]
    remainder = padded.reshape(*n, *d).permute(*order).contiguous()
    norm = float(torch.linalg.norm(padded))

    cores: list[Tensor] = []
    discarded: list[float] = []
    rows = 1
    for k in range(c - 1):
        matrix = remainder.reshape(rows * n[k] * d[k], -1)
        r = ranks[k + 1]
        u, remainder, dropped = _truncate(matrix, r)
        discarded.append(dropped)
        # core k as [r_{k-1}, n_k, d_k, r_k] -> stored [n_k, r_{k-1}, d_k, r_k]
        cores.append(u.reshape(rows, n[k], d[k], r).permute(1, 0, 2, 3))
        rows = r
    cores.append(remainder.reshape(rows, n[-1], d[-1], 1).permute(1, 0, 2, 3))

    if balance:
        norms = [float(torch.linalg.norm(core)) for core in cores]
        if all(x > 0 for x in norms):
            target = math.exp(sum(math.log(x) for x in norms) / c)  # geometric mean keeps the product
            cores = [core * (target / x) for core, x in zip(cores, norms)]
    out = [core.to(dtype=weight.dtype, device=weight.device).contiguous() for core in cores]
    return TTDecomposition(cores=out, discarded=discarded, norm=norm)


# --------------------------------------------------------------------------- the module


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
        if not isinstance(tt_rank, int) or isinstance(tt_rank, bool) or tt_rank < 1:
            raise ValueError(f"tt_rank must be a positive int, got {tt_rank!r}")
        s, t = int(num_embeddings), int(embedding_dim)
        if s < 1 or t < 1:
            raise ValueError(f"a TT table needs >= 1 row and column, got {num_embeddings} x {embedding_dim}")
        if row_factors is None:
            row_factors = balanced_row_factors(s, num_cores if dim_factors is None else len(dim_factors))
        if dim_factors is None:
            dim_factors = tt_rec_dim_factors(t, len(row_factors))
        _check_factors(s, t, row_factors, dim_factors)
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
        self._strides = [_prod(self.row_factors[k + 1 :]) for k in range(len(self.row_factors))]
        sampled_gaussian_(list(self.cores), init_std)

    # -- construction --------------------------------------------------------
    @classmethod
    def from_table(
        cls,
        weight: Tensor,
        tt_rank: int = DEFAULT_TT_RANK,
        row_factors: Sequence[int] | None = None,
        dim_factors: Sequence[int] | None = None,
        num_cores: int = DEFAULT_NUM_CORES,
        padding_idx: int | None = None,
        deduplicate: bool = True,
    ) -> "TTEmbedding":
        """A train of rank ``tt_rank`` fitted to ``weight`` ``[s, t]`` by TT-SVD (:func:`tt_svd`).

        TT-SVD is quasi-optimal: its error is at most ``sqrt(c - 1)`` times that of the best
        train of the same ranks (Oseledets 2011, Theorem 2.2).

        Exact when ``tt_rank`` reaches every bound of :func:`tt_ranks_for`. Same dtype and
        device as ``weight``. The decomposition's error is kept as ``tt_svd_relative_error``.
        """
        if weight.dim() != 2:
            raise ValueError(f"weight must be a [rows, dim] table, got shape {tuple(weight.shape)}")
        module = cls(
            weight.shape[0],
            weight.shape[1],
            tt_rank,
            row_factors=row_factors,
            dim_factors=dim_factors,
            num_cores=num_cores,
            padding_idx=padding_idx,
            deduplicate=deduplicate,
            device=weight.device,
            dtype=weight.dtype,
        )
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


# --------------------------------------------------------------------------- surgery


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def _table(model: nn.Module, name: str) -> nn.Embedding:
    if not name:
        raise ValueError("give the dotted name of an nn.Embedding inside the model, not the model itself")
    try:
        module = model.get_submodule(name)
    except AttributeError as err:
        raise ValueError(f"{type(model).__name__} has no submodule {name!r} ({err})") from None
    if not isinstance(module, nn.Embedding):
        raise ValueError(
            f"{name!r} is a {type(module).__name__}, not an nn.Embedding; only plain tables become TT tables"
        )
    if module.max_norm is not None:
        raise ValueError(f"{name!r} renormalises rows (max_norm={module.max_norm}), which a TT table cannot do")
    if module.sparse:
        raise ValueError(
            f"{name!r} has sparse gradients (sparse=True); TT cores get dense gradients, so a sparse "
            "optimiser would break: rebuild the table with sparse=False first"
        )
    if module.scale_grad_by_freq:
        raise ValueError(
            f"{name!r} scales gradients by frequency (scale_grad_by_freq=True), which a TT table does not do"
        )
    return module


def build_tt_embedding(
    model: nn.Module,
    name: str,
    tt_rank: int = DEFAULT_TT_RANK,
    init: str = "svd",
    row_factors: Sequence[int] | None = None,
    dim_factors: Sequence[int] | None = None,
    num_cores: int = DEFAULT_NUM_CORES,
    init_std: float | None = None,
    deduplicate: bool = True,
) -> tuple[PlanEntry, TTEmbedding]:
    """The :class:`TTEmbedding` that would replace the nn.Embedding ``name``, and its plan entry.

    Changes nothing. ``init``: ``"svd"`` (TT-SVD of the trained table) or ``"random"``
    (:func:`sampled_gaussian_` with ``init_std``, default TT-Rec's :func:`tt_rec_init_std`:
    ``1 / sqrt(3 s)``, the table's values are not read).
    """
    if not isinstance(tt_rank, int) or isinstance(tt_rank, bool) or tt_rank < 1:
        raise ValueError(f"tt_rank must be a positive int, got {tt_rank!r}")
    if init not in TT_INITS:
        raise ValueError(f"init must be one of {TT_INITS}, got {init!r}")
    table = _table(model, name)
    s, t = table.weight.shape
    try:
        if init == "svd":
            new = TTEmbedding.from_table(
                table.weight,
                tt_rank,
                row_factors=row_factors,
                dim_factors=dim_factors,
                num_cores=num_cores,
                padding_idx=table.padding_idx,
                deduplicate=deduplicate,
            )
        else:
            std = tt_rec_init_std(s) if init_std is None else float(init_std)
            new = TTEmbedding(
                s,
                t,
                tt_rank,
                row_factors=row_factors,
                dim_factors=dim_factors,
                num_cores=num_cores,
                padding_idx=table.padding_idx,
                deduplicate=deduplicate,
                init_std=std,
                device=table.weight.device,
                dtype=table.weight.dtype,
            )
    except (ValueError, TypeError) as err:
        raise type(err)(f"{name!r}: {err}") from err
    flags: dict[str, object] = {
        "row_factors": list(new.row_factors),
        "dim_factors": list(new.dim_factors),
        "tt_ranks": list(new.tt_ranks),
        "padding_idx": new.padding_idx,
        "deduplicate": new.deduplicate,
        "init": init,
    }
    if init == "svd":
        flags["relative_error"] = float(new.tt_svd_relative_error)
    entry = PlanEntry(name=name, kind="tt_embedding", method="ttd", rank=int(tt_rank), shape=[s, t], flags=flags)
    return entry, new


def compress_embedding_ttd(
    model: nn.Module,
    name: str,
    tt_rank: int = DEFAULT_TT_RANK,
    init: str = "svd",
    row_factors: Sequence[int] | None = None,
    dim_factors: Sequence[int] | None = None,
    num_cores: int = DEFAULT_NUM_CORES,
    init_std: float | None = None,
    deduplicate: bool = True,
) -> PlanEntry:
    """Replace the nn.Embedding ``name`` by a :class:`TTEmbedding`; returns the ``"tt_embedding"`` plan entry.

    Everything is validated and the new table built before the model changes, so a bad
    request raises and leaves the model as it was. Arguments as :func:`build_tt_embedding`.

    Example:
        >>> model = nn.Sequential(nn.Embedding(1000, 16))
        >>> entry = compress_embedding_ttd(model, "0", tt_rank=4)
        >>> type(model[0]).__name__, entry.kind, entry.method, entry.rank
        ('TTEmbedding', 'tt_embedding', 'ttd', 4)
    """
    entry, new = build_tt_embedding(
        model, name, tt_rank, init, row_factors, dim_factors, num_cores, init_std, deduplicate
    )
    _replace(model, name, new)
    return entry


def compress_embeddings_ttd(
    model: nn.Module,
    names: Sequence[str],
    tt_rank: int = DEFAULT_TT_RANK,
    init: str = "svd",
    num_cores: int = DEFAULT_NUM_CORES,
    init_std: float | None = None,
    deduplicate: bool = True,
) -> list[PlanEntry]:
    """:func:`compress_embedding_ttd` on several tables, all or nothing (every table built first).

    Factors are left to their defaults per table (tables differ in rows). Returns the entries
    in ``names`` order.
    """
    if not names:
        raise ValueError("no embedding tables to compress")
    built = [
        build_tt_embedding(model, name, tt_rank, init, None, None, num_cores, init_std, deduplicate) for name in names
    ]
    for entry, new in built:
        _replace(model, entry.name, new)
    return [entry for entry, _ in built]


def select_tt_tables(
    model: nn.Module,
    names: Sequence[str],
    min_rows: int = DEFAULT_TT_MIN_ROWS,
    lr_tables: bool = True,
) -> list[str]:
    """The tables a TT-Rec stage compresses: ``names`` with ``>= min_rows`` rows, and their LR tables.

    TT-Rec replaces only the large tables: a small one costs less dense than as cores (a
    3-row table of width 16 is 48 entries; its rank-16 cores are over 800), and its lookup
    is cheap. ``lr_tables``: for each selected field table ``embeddings.<field>`` of a CTR
    model, also its width-1 LR (first-order) table ``linear.<field>``: with 33.8M Criteo rows the
    dense LR tables alone are 33.2M parameters against the 3.76M of the paper's whole TTD
    model (Table 4, line 715), so the paper's TTD compresses them too. A model without a
    ``linear`` part (or a field without an LR table) just has no LR table to add.

    Returns the field tables in ``names`` order, then their LR tables in the same order.

    Raises:
        ValueError: ``min_rows`` is not a positive int, or no table in ``names`` has that many rows.
    """
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        raise ValueError(f"min_rows must be a positive int (tables with fewer rows stay dense), got {min_rows!r}")
    sizes = {name: _table(model, name).num_embeddings for name in names}
    large = [name for name in names if sizes[name] >= min_rows]
    if not large:
        biggest = max(sizes.values(), default=0)
        raise ValueError(
            f"no table has {min_rows} rows or more (the largest of {len(sizes)} has {biggest}); TT-Rec leaves "
            f"tables below min_rows dense, so nothing would be compressed: lower min_rows (ttd_min_rows)"
        )
    lr: list[str] = []
    if lr_tables:
        linear = getattr(model, "linear", None)
        for name in large:
            prefix, _, field = name.rpartition(".")
            candidate = f"linear.{field}"
            if prefix != "embeddings" or linear is None or candidate in large:
                continue
            try:
                module = model.get_submodule(candidate)
            except AttributeError:
                continue
            if isinstance(module, nn.Embedding):
                _table(model, candidate)  # the same checks as any table
                lr.append(candidate)
    return large + lr


def replay_tt_embedding(model: nn.Module, entry: PlanEntry) -> None:
    """Rebuild a ``"tt_embedding"`` entry's structure (random cores) in place of the nn.Embedding it replaced."""
    try:
        table = model.get_submodule(entry.name)
    except AttributeError as err:
        raise ValueError(f"{type(model).__name__} has no submodule {entry.name!r} ({err})") from None
    if not isinstance(table, nn.Embedding) or list(table.weight.shape) != entry.shape:
        found = f"{type(table).__name__} {list(table.weight.shape) if hasattr(table, 'weight') else ''}"
        raise ValueError(
            f"cannot replay the TT table {entry.name!r}: expected an nn.Embedding with weight {entry.shape}, "
            f"found {found}; is this the same model architecture?"
        )
    flags = entry.flags
    if "row_factors" not in flags or "dim_factors" not in flags:
        raise ValueError(f"TT plan entry {entry.name!r} lacks row_factors/dim_factors in its flags: {flags}")
    s, t = entry.shape
    new = TTEmbedding(
        s,
        t,
        entry.rank,
        row_factors=flags["row_factors"],
        dim_factors=flags["dim_factors"],
        padding_idx=flags.get("padding_idx"),
        deduplicate=bool(flags.get("deduplicate", True)),
        device=table.weight.device,
        dtype=table.weight.dtype,
    )
    if "tt_ranks" in flags and list(flags["tt_ranks"]) != new.tt_ranks:
        raise ValueError(
            f"TT plan entry {entry.name!r} records ranks {flags['tt_ranks']}, but rank {entry.rank} with "
            f"factors {new.row_factors} x {new.dim_factors} gives {new.tt_ranks}"
        )
    _replace(model, entry.name, new)
