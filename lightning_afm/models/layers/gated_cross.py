"""The gated cross network of GDCN (Wang et al., "Towards Deeper, Lighter and Interpretable
Cross Network for CTR Prediction", CIKM 2023)."""

from __future__ import annotations

import torch
from torch import nn



class GatedCrossLayer(nn.Module):
    """``c_{l+1} = c_0 * (W_c c_l + b_c) * sigmoid(W_g c_l) + c_l``.

    The information gate ``sigmoid(W_g c_l)`` weighs each crossed feature; both
    ``W_c`` and ``W_g`` are full ``D x D`` matrices, only the crossing has a bias
    (``2 D^2 + D`` parameters). ``b_c`` starts from ``U(0, 1)`` as in the GDCN code.

    Shapes: ``c0``, ``c`` ``[B, D]`` -> ``[B, D]``.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.cross = nn.Linear(in_features, in_features)
        self.gate = nn.Linear(in_features, in_features, bias=False)
        nn.init.uniform_(self.cross.bias, 0.0, 1.0)

    def forward(self, c0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return c0 * self.cross(c) * torch.sigmoid(self.gate(c)) + c


class GatedCrossNetwork(nn.Module):
    """A stack of :class:`GatedCrossLayer` on ``c_0``.

    Args:
        in_features: ``D``.
        num_layers: number of gated cross layers (2 reproduces Table 2's GDCN counts).

    Shapes: ``[B, D]`` -> ``[B, D]``.

    Example:
        >>> GatedCrossNetwork(6, num_layers=3)(torch.randn(4, 6)).shape
        torch.Size([4, 6])
    """

    def __init__(self, in_features: int, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.layers = nn.ModuleList(GatedCrossLayer(in_features) for _ in range(num_layers))

    def forward(self, c0: torch.Tensor) -> torch.Tensor:
        c = c0
        for layer in self.layers:
            c = layer(c0, c)
        return c
