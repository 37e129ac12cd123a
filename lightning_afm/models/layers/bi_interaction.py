"""Bi-interaction pooling (NFM): the FM term kept as a vector."""

from __future__ import annotations

import torch
from torch import nn


class BiInteractionPooling(nn.Module):
    """Sum of the element-wise products of all field pairs, ``sum_{i<j} e_i * e_j``.

    Computed in ``O(F d)`` as ``0.5 * ((sum_i e_i)^2 - sum_i e_i^2)`` (He & Chua,
    2017). Summing the output over ``d`` gives the FM term. No parameters.

    Shapes: ``[B, F, d]`` -> ``[B, d]``.

    Example:
        >>> e = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
        >>> BiInteractionPooling()(e)
        tensor([[3., 8.]])
    """

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return 0.5 * (embeddings.sum(dim=1).pow(2) - embeddings.pow(2).sum(dim=1))
