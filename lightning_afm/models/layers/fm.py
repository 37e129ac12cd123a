"""Second-order factorization machine term (DeepFM's FM part)."""

from __future__ import annotations

import torch
from torch import nn


class FactorizationMachine(nn.Module):
    """Sum of all pairwise dot products of field embeddings, ``sum_{i<j} <e_i, e_j>``.

    Computed in ``O(F d)`` as ``0.5 * sum_k ((sum_i e_ik)^2 - sum_i e_ik^2)``
    (Rendle, 2010). No parameters.

    Shapes: ``[B, F, d]`` -> ``[B]``.

    Example:
        >>> e = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
        >>> FactorizationMachine()(e)  # 1*3+2*4 + 1*5+2*6 + 3*5+4*6
        tensor([67.])
    """

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        square_of_sum = embeddings.sum(dim=1).pow(2)
        sum_of_square = embeddings.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)
