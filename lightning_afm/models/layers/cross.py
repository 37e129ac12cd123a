"""The cross network of DCN (Wang et al., ADKDD 2017): one weight vector per layer."""

from __future__ import annotations

import torch
from torch import nn


class CrossNetwork(nn.Module):
    """``x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l`` for ``l = 0..L-1``.

    ``w_l`` and ``b_l`` are vectors of width ``D``, so each layer has ``2 D``
    parameters (DeepCTR-Torch 0.3.0's ``CrossNet(parameterization="vector")``:
    Xavier-normal weights, zero biases).

    Args:
        in_features: ``D``, the width of ``x_0``.
        num_layers: ``L`` (DeepCTR-Torch's default and the paper's: 2).

    Shapes: ``[B, D]`` -> ``[B, D]``.

    Example:
        >>> CrossNetwork(6, num_layers=2)(torch.randn(4, 6)).shape
        torch.Size([4, 6])
    """

    def __init__(self, in_features: int, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.in_features = int(in_features)
        self.num_layers = int(num_layers)
        self.weight = nn.Parameter(torch.empty(self.num_layers, self.in_features))
        self.bias = nn.Parameter(torch.zeros(self.num_layers, self.in_features))
        # Xavier-normal of a (D, 1) kernel, as DeepCTR-Torch initialises it
        nn.init.normal_(self.weight, std=(2.0 / (self.in_features + 1)) ** 0.5)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.weight, self.bias):
            x = x0 * (x @ w).unsqueeze(1) + b + x
        return x
