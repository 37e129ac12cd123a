"""The deep part shared by all models: Linear -> [BatchNorm] -> ReLU -> Dropout blocks."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .dropout import Dropout


class MLPBlock(nn.Module):
    """One hidden layer: ``dropout(relu(norm(linear(x))))``.

    Dropout is :class:`Dropout` (an ``nn.Dropout`` with a cheaper mask draw).
    The Linear is the attribute ``linear`` (compression replaces it by a factored
    module with the same input and output widths). Batch norm sits between the
    Linear and the ReLU, as in DeepCTR-Torch's DNN.

    Shapes: ``[B, in_features]`` -> ``[B, out_features]``.

    Example:
        >>> MLPBlock(8, 4, dropout=0.5, batch_norm=True)(torch.randn(3, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.linear = nn.Linear(in_features, out_features)
        self.norm = nn.BatchNorm1d(out_features) if batch_norm else None
        self.activation = nn.ReLU()
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(self.activation(x))


class MLP(nn.Sequential):
    """A stack of :class:`MLPBlock`; ``mlp[i].linear`` is the i-th hidden Linear.

    The 1-unit output layer is not part of it (each model owns an ``output`` Linear,
    which may also read other branches such as a cross network).

    Args:
        in_features: input width.
        hidden: widths of the hidden layers, e.g. ``(400, 400, 400)``.
        dropout: dropout probability after every ReLU.
        batch_norm: add ``BatchNorm1d`` after every Linear.

    Shapes: ``[B, in_features]`` -> ``[B, hidden[-1]]``.

    Example:
        >>> mlp = MLP(10, (6, 6), dropout=0.1)
        >>> mlp(torch.randn(5, 10)).shape, type(mlp[1].linear).__name__
        (torch.Size([5, 6]), 'Linear')
    """

    def __init__(self, in_features: int, hidden: Sequence[int], dropout: float = 0.0, batch_norm: bool = False) -> None:
        hidden = [int(h) for h in hidden]
        if not hidden:
            raise ValueError("an MLP needs at least one hidden layer (mlp_hidden is empty)")
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden widths must be >= 1, got {hidden}")
        widths = [int(in_features)] + hidden
        super().__init__(*(MLPBlock(a, b, dropout, batch_norm) for a, b in zip(widths[:-1], widths[1:])))
        self.out_features = hidden[-1]
