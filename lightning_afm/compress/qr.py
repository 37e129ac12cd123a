"""The quotient-remainder trick (Shi et al., KDD 2020, the paper's [21]): a table from two small ones.

Row ``i`` of an ``s x t`` table is composed from row ``i // m`` of a *quotient* table
(``ceil(s / m) x t``) and row ``i % m`` of a *remainder* table (``m x t``), ``m`` the number of
collisions. The two partitions are complementary: no two ids share both rows, so every id keeps
a distinct vector while the table shrinks from ``s t`` to ``(ceil(s / m) + m) t`` entries.
The rows combine element-wise: ``"mult"`` (the product, Shi et al.'s default) or ``"add"``.

Initialisation: Shi et al. train the compositional tables from scratch (``init="random"``).
``init="table"`` starts from a trained table instead: each quotient row is the mean of the
``m`` rows it covers and the remainder rows are the operation's identity (ones / zeros), so the
swap starts as the best "hash the ids into ``ceil(s / m)`` buckets" table, and the remainder
rows learn what tells the ``m`` ids of a bucket apart during the finetune.

The plan kind ``"qr_embedding"`` (swapping a model's tables) is
:mod:`lightning_afm.compress.kinds.qr_embedding`; this module is the maths and the table alone.

Example:
    >>> emb = QREmbedding(1000, 16, collisions=8)
    >>> emb.quotient.num_embeddings, emb.remainder.num_embeddings, emb.num_parameters
    (125, 8, 2128)
    >>> emb(torch.tensor([[0, 999], [5, 5]])).shape
    torch.Size([2, 2, 16])
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["QR_OPERATIONS", "QR_INITS", "QREmbedding", "qr_rows", "qr_saves"]

#: How the quotient and remainder rows combine: the element-wise product (Shi et al.'s default) or sum.
QR_OPERATIONS = ("mult", "add")
#: Where the compositional tables start: at random (Shi et al.) or from the trained table.
QR_INITS = ("random", "table")


def _check_collisions(collisions: object) -> int:
    if isinstance(collisions, bool) or not isinstance(collisions, int) or collisions < 2:
        raise ValueError(f"collisions must be an int >= 2 (ids per quotient row), got {collisions!r}")
    return collisions


def qr_rows(num_embeddings: int, collisions: int) -> int:
    """Rows of the two tables together, ``ceil(s / m) + m``, for an ``s``-row table and ``m`` collisions."""
    m = _check_collisions(collisions)
    return math.ceil(int(num_embeddings) / m) + m


def qr_saves(num_embeddings: int, collisions: int) -> bool:
    """Whether the QR tables have fewer rows than the table itself (a small table is better left dense)."""
    return qr_rows(num_embeddings, collisions) < int(num_embeddings)


class QREmbedding(nn.Module):
    """An ``s x t`` table composed from a quotient and a remainder table (the QR trick).

    Args:
        num_embeddings: ``s``, rows of the table it stands for.
        embedding_dim: ``t``, the row width (both tables have it).
        collisions: ``m``, ids per quotient row (>= 2).
        operation: ``"mult"`` or ``"add"``, see :data:`QR_OPERATIONS`.
        init_std: std of the random start; with ``"mult"`` the quotient rows are drawn from
            ``N(0, init_std^2)`` and the remainder rows start at one, so a row starts at the
            scale ``init_std`` a plain table of the model would have (a product of two small
            random numbers would start near zero); with ``"add"`` both halves are drawn with
            std ``init_std / sqrt(2)``.

    Shapes:
        ``forward(idx)``: ``[...]`` int64 in ``[0, s)`` -> ``[..., t]``.
        ``quotient.weight``: ``[ceil(s / m), t]``; ``remainder.weight``: ``[m, t]``.
        ``full_table()``: ``[s, t]`` (tests and small tables: it builds every row).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, collisions: int, operation: str = "mult",
                 init_std: float = 1.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        s, t, m = int(num_embeddings), int(embedding_dim), _check_collisions(collisions)
        if s < 1 or t < 1:
            raise ValueError(f"a QR table needs >= 1 row and column, got {num_embeddings} x {embedding_dim}")
        if operation not in QR_OPERATIONS:
            raise ValueError(f"operation must be one of {QR_OPERATIONS}, got {operation!r}")
        self.num_embeddings, self.embedding_dim, self.collisions, self.operation = s, t, m, operation
        self.quotient = nn.Embedding(math.ceil(s / m), t, device=device, dtype=dtype)
        self.remainder = nn.Embedding(m, t, device=device, dtype=dtype)
        self.reset_parameters(init_std)

    @torch.no_grad()
    def reset_parameters(self, init_std: float = 1.0) -> None:
        """The random start described in the class docstring."""
        if self.operation == "mult":
            nn.init.normal_(self.quotient.weight, std=init_std)
            nn.init.ones_(self.remainder.weight)
        else:
            nn.init.normal_(self.quotient.weight, std=init_std / math.sqrt(2))
            nn.init.normal_(self.remainder.weight, std=init_std / math.sqrt(2))

    @classmethod
    @torch.no_grad()
    def from_table(cls, weight: torch.Tensor, collisions: int, operation: str = "mult") -> "QREmbedding":
        """The QR table that starts from the trained ``weight`` ``[s, t]`` (``init="table"``).

        Quotient row ``j`` is the mean of rows ``j m .. j m + m - 1`` (fewer in the last bucket),
        the remainder rows the operation's identity: the composed row of id ``i`` is then the mean
        of its bucket, the least-squares best a table of ``ceil(s / m)`` shared rows can do.
        """
        if weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D [rows, width] table, got shape {tuple(weight.shape)}")
        s, t = weight.shape
        new = cls(s, t, collisions, operation, device=weight.device, dtype=weight.dtype)
        m = new.collisions
        buckets = torch.arange(s, device=weight.device) // m
        sums = torch.zeros(new.quotient.num_embeddings, t, device=weight.device, dtype=torch.float64)
        sums.index_add_(0, buckets, weight.detach().to(torch.float64))
        counts = torch.bincount(buckets, minlength=new.quotient.num_embeddings).to(torch.float64)
        new.quotient.weight.copy_(sums / counts[:, None])
        (nn.init.ones_ if operation == "mult" else nn.init.zeros_)(new.remainder.weight)
        return new

    @property
    def num_parameters(self) -> int:
        return self.quotient.weight.numel() + self.remainder.weight.numel()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        q = self.quotient(torch.div(idx, self.collisions, rounding_mode="floor"))
        r = self.remainder(torch.remainder(idx, self.collisions))
        return q * r if self.operation == "mult" else q + r

    def full_table(self) -> torch.Tensor:
        return self(torch.arange(self.num_embeddings, device=self.quotient.weight.device))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, collisions={self.collisions}, operation={self.operation!r}"
