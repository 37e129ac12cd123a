"""Product quantization of embedding tables (Jegou et al., TPAMI 2011, the paper's [13]).

An ``s x t`` table is cut into ``D`` sub-spaces of ``t / D`` columns; each sub-space's ``s``
sub-vectors are clustered by k-means into ``K`` centroids (its *codebook*), and each row keeps
only the index of its nearest centroid per sub-space (its *codes*, ``D`` small integers). A
lookup concatenates the ``D`` codebook rows its codes name.

The codes are computed once, from the trained table, and then fixed; the codebooks are the
parameters the finetune trains (a gradient reaches a centroid through every row that uses it).
The codes are a buffer: they travel in the state dict and checkpoints, and are not parameters
to PyTorch, but they are stored values of the compressed model, so the paper's counts (Table
17's 102.08M for PQ) include them as one value per code: see :func:`pq_stored_values`.

The plan kind ``"pq_embedding"`` (quantizing a model's tables) is
:mod:`lightning_afm.compress.kinds.pq_embedding`; this module is the maths and the table alone.

Example:
    >>> table = torch.randn(1000, 16)
    >>> emb = PQEmbedding.from_table(table, num_subspaces=2, num_centroids=64, seed=0)
    >>> emb.codebooks.shape, emb.assignments.shape, emb.stored_values
    (torch.Size([2, 64, 8]), torch.Size([1000, 2]), 3024)
    >>> emb(torch.tensor([[0, 999], [5, 5]])).shape
    torch.Size([2, 2, 16])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DEFAULT_KMEANS_ITERATIONS", "PQEmbedding", "kmeans", "nearest_centroid", "pq_stored_values",
           "stored_values"]

#: Lloyd iterations of the k-means per sub-space (a few: the finetune moves the centroids anyway).
DEFAULT_KMEANS_ITERATIONS = 10
#: Rows per distance block in the nearest-centroid search (a ``[chunk, K]`` float64 block).
_CHUNK = 16384


def _check_positive_int(value: object, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} must be a positive int, got {value!r}")
    return value


def nearest_centroid(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean distance, first on ties) of each point.

    Shapes: ``points`` ``[n, d]``, ``centroids`` ``[K, d]`` -> ``[n]`` int64. Works in blocks of
    rows so a 10^7-row table never needs an ``n x K`` matrix.
    """
    c_norm = (centroids * centroids).sum(1)
    out = torch.empty(points.shape[0], dtype=torch.long, device=points.device)
    for start in range(0, points.shape[0], _CHUNK):
        block = points[start:start + _CHUNK]
        # ||x||^2 is the same for every centroid of a row: argmin needs only -2 x.c + ||c||^2
        out[start:start + _CHUNK] = (c_norm - 2.0 * block @ centroids.T).argmin(1)
    return out


def kmeans(points: torch.Tensor, num_centroids: int, iterations: int = DEFAULT_KMEANS_ITERATIONS,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of ``points`` ``[n, d]``: ``(centroids [K, d], assignment [n] int64)``, float64.

    With at most ``K`` distinct points the centroids are the distinct points (the rest repeat the
    first) and every point is its own centroid: exact. Otherwise the centroids start at ``K``
    distinct points drawn with ``seed`` and move ``iterations`` times to the means of their
    points; a centroid left without points keeps its place. The assignment returned is the
    nearest centroid of the final centroids.
    """
    K = _check_positive_int(num_centroids, "num_centroids")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    if points.dim() != 2 or points.shape[0] < 1:
        raise ValueError(f"points must be a non-empty [n, d] matrix, got shape {tuple(points.shape)}")
    x = points.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("the table holds NaN or Inf values; k-means needs finite rows")
    distinct, inverse = torch.unique(x, dim=0, return_inverse=True)
    if distinct.shape[0] <= K:
        pad = distinct[:1].expand(K - distinct.shape[0], -1)
        return torch.cat([distinct, pad]), inverse
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    pick = torch.randperm(distinct.shape[0], generator=generator)[:K].to(x.device)
    centroids = distinct[pick].clone()
    for _ in range(iterations):
        assignment = nearest_centroid(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        counts = torch.bincount(assignment, minlength=K)
        used = counts > 0
        centroids[used] = sums[used] / counts[used, None].to(x.dtype)
    return centroids, nearest_centroid(x, centroids)


def _code_dtype(num_centroids: int) -> torch.dtype:
    """The smallest signed integer type that holds a code (``index`` needs signed types)."""
    return torch.int16 if num_centroids <= 2**15 else torch.int32


def pq_stored_values(num_embeddings: int, embedding_dim: int, num_subspaces: int, num_centroids: int) -> int:
    """Values a PQ table stores: ``K t`` codebook entries plus ``s D`` codes (``K`` clipped to ``s``)."""
    return min(int(num_centroids), int(num_embeddings)) * int(embedding_dim) + int(num_embeddings) * int(num_subspaces)


class PQEmbedding(nn.Module):
    """An ``s x t`` table stored as ``D`` codebooks of ``K`` centroids and ``D`` fixed codes per row.

    Args:
        num_embeddings: ``s``.
        embedding_dim: ``t``, divisible by ``num_subspaces``.
        num_subspaces: ``D``, sub-vectors per row.
        num_centroids: ``K`` per sub-space; clipped to ``s`` (more centroids than rows buy nothing).

    Shapes:
        ``codebooks`` (parameter): ``[D, K, t / D]``; ``assignments`` (buffer): ``[s, D]`` int16/int32.
        ``forward(idx)``: ``[...]`` int64 in ``[0, s)`` -> ``[..., t]``.
        ``full_table()``: ``[s, t]``.

    A fresh instance has zero codebooks and every code 0: it is a structure to load a state
    dict into (checkpoint replay); :meth:`from_table` quantizes a trained table.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, num_subspaces: int, num_centroids: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        s = _check_positive_int(int(num_embeddings), "num_embeddings")
        t = _check_positive_int(int(embedding_dim), "embedding_dim")
        D = _check_positive_int(num_subspaces, "num_subspaces")
        K = min(_check_positive_int(num_centroids, "num_centroids"), s)
        if t % D:
            divisors = [d for d in range(1, t + 1) if t % d == 0]
            raise ValueError(f"num_subspaces {D} does not divide the table width {t}; use one of {divisors}")
        self.num_embeddings, self.embedding_dim, self.num_subspaces, self.num_centroids = s, t, D, K
        self.codebooks = nn.Parameter(torch.zeros(D, K, t // D, device=device, dtype=dtype))
        self.register_buffer("assignments", torch.zeros(s, D, dtype=_code_dtype(K), device=device))

    @classmethod
    @torch.no_grad()
    def from_table(cls, weight: torch.Tensor, num_subspaces: int, num_centroids: int,
                   iterations: int = DEFAULT_KMEANS_ITERATIONS, seed: int = 0) -> "PQEmbedding":
        """Quantize ``weight`` ``[s, t]``: k-means (float64, seeded: sub-space ``j`` uses ``seed + j``) per sub-space."""
        if weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D [rows, width] table, got shape {tuple(weight.shape)}")
        s, t = weight.shape
        new = cls(s, t, num_subspaces, num_centroids, device=weight.device, dtype=weight.dtype)
        width = t // new.num_subspaces
        for j in range(new.num_subspaces):
            centroids, assignment = kmeans(weight[:, j * width:(j + 1) * width], new.num_centroids, iterations, seed + j)
            new.codebooks[j].copy_(centroids)
            new.assignments[:, j] = assignment.to(new.assignments.dtype)
        return new

    @property
    def stored_values(self) -> int:
        """Codebook entries plus codes: the paper's count of a PQ table (see the module docstring)."""
        return self.codebooks.numel() + self.assignments.numel()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        codes = self.assignments[idx].long()  # [..., D]
        subspaces = torch.arange(self.num_subspaces, device=codes.device)
        rows = self.codebooks[subspaces, codes]  # [..., D, t / D]
        shape = list(idx.shape)  # a list, not *idx.shape: TorchScript (export, inference) takes no starred args
        shape.append(self.embedding_dim)
        return rows.reshape(shape)

    def full_table(self) -> torch.Tensor:
        return self(torch.arange(self.num_embeddings, device=self.codebooks.device))

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, num_subspaces={self.num_subspaces}, "
                f"num_centroids={self.num_centroids}")


def stored_values(model: nn.Module) -> int:
    """Parameter elements plus the PQ tables' codes: the count the paper gives a PQ model (Table 17)."""
    params = sum(p.numel() for p in model.parameters())
    return params + sum(m.assignments.numel() for m in model.modules() if isinstance(m, PQEmbedding))
