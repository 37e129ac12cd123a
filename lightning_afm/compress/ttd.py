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

As TT-Rec, only the large tables become trains (:func:`~lightning_afm.compress.kinds.tt_embedding.select_tt_tables`, ``>= 10^5`` rows by
default), the width-1 LR tables of those fields included; the small ones stay dense.

This module holds the maths (shapes, ranks, initialisation, TT-SVD); the table module is
:class:`lightning_afm.compress.tt_modules.TTEmbedding` and the compression kind
``"tt_embedding"`` (building, replaying, choosing the tables) is
:mod:`lightning_afm.compress.kinds.tt_embedding`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_afm.compress.registry import check_rank

__all__ = [
    "DEFAULT_TT_RANK",
    "DEFAULT_NUM_CORES",
    "DEFAULT_TT_MIN_ROWS",
    "TT_INITS",
    "TTDecomposition",
    "balanced_row_factors",
    "balanced_dim_factors",
    "check_tt_factors",
    "tt_rec_dim_factors",
    "tt_rec_init_std",
    "tt_ranks_for",
    "tt_svd",
    "sampled_gaussian_",
]

#: TT-rank of the paper's TTD baseline (TT-Rec's default as well).
DEFAULT_TT_RANK = 16
#: Number of cores; TT-Rec uses 3.
DEFAULT_NUM_CORES = 3
#: How a TT table built from a trained one gets its cores: TT-SVD of the table, or drawn at random.
TT_INITS = ("svd", "random")
#: Tables with fewer rows stay dense (:func:`~lightning_afm.compress.kinds.tt_embedding.select_tt_tables`). TT-Rec compresses only the large
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
    check_rank(tt_rank, label="tt_rank")
    modes = [int(n) * int(d) for n, d in zip(row_factors, dim_factors)]
    ranks = [1]
    for k in range(len(modes) - 1):
        ranks.append(min(int(tt_rank), ranks[-1] * modes[k], _prod(modes[k + 1 :])))
    ranks.append(1)
    return ranks


def check_tt_factors(
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
    check_tt_factors(s, t, row_factors, dim_factors)
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
