"""Squeeze-and-excitation over fields (FiBiNet's SENET layer)."""

from __future__ import annotations

import torch
from torch import nn


class SENETLayer(nn.Module):
    """Re-weight each field embedding by a learned importance.

    ``z = mean_k e_{:, :, k}`` (squeeze, ``[B, F]``),
    ``a = relu(W_2 relu(W_1 z))`` (excitation, ``W_1``: ``F -> max(1, F // ratio)``,
    no biases, as in DeepCTR-Torch), output ``e * a[:, :, None]``.

    Args:
        num_fields: ``F``.
        reduction_ratio: DeepCTR-Torch's default 3.

    Shapes: ``[B, F, d]`` -> ``[B, F, d]``.

    Example:
        >>> SENETLayer(4, reduction_ratio=2)(torch.randn(3, 4, 5)).shape
        torch.Size([3, 4, 5])
    """

    def __init__(self, num_fields: int, reduction_ratio: int = 3) -> None:
        super().__init__()
        if reduction_ratio < 1:
            raise ValueError(f"reduction_ratio must be >= 1, got {reduction_ratio}")
        self.reduced = max(1, int(num_fields) // int(reduction_ratio))
        self.squeeze_linear = nn.Linear(num_fields, self.reduced, bias=False)
        self.excite_linear = nn.Linear(self.reduced, num_fields, bias=False)

    def field_weights(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, F, d]`` -> the per-field weights ``a``, ``[B, F]``."""
        z = embeddings.mean(dim=2)
        return torch.relu(self.excite_linear(torch.relu(self.squeeze_linear(z))))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings * self.field_weights(embeddings).unsqueeze(2)
