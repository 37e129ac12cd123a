"""DCNv2's and GDCN's cross networks computed at a GEMM-friendly width.

CPU matrix products slow down sharply when the output width is not a multiple of the
kernels' vector block: at batch 10,000 on this project's 2-core CPU (1 thread), ``x @ W.T``
with ``W`` of ``429 x 429`` (DCNv2 / GDCN at the Criteo shape: 26 fields x 16 + 13 numeric)
took 81 ms, the same product at ``432 x 432`` 56 ms, although it does slightly more work
(``benchmarks/bench_cross_alignment.py``).
The cross networks therefore run on ``x_0`` padded with zero columns to the next multiple of
:data:`GEMM_ALIGN` and on weights padded with zero rows and columns. The padded columns stay
exactly zero through every layer (zero weight rows, zero bias, and ``x_0``'s padding is zero),
so the result, once sliced back to ``D``, is the unpadded one. The padded weights are rebuilt
from the shared ``D x D`` ones on every call (a ``D^2`` copy, nothing next to the ``B D^2``
product), so they always follow the training model's current values.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_afm.models.layers.cross_v2 import CrossNetworkV2, MatrixCrossLayer
from lightning_afm.models.layers.gated_cross import GatedCrossLayer, GatedCrossNetwork

from .sharing import Tensors

#: Pad square layers to a multiple of this many columns (16 float32 = one AVX-512 vector).
GEMM_ALIGN = 16


def aligned_width(width: int, multiple: int = GEMM_ALIGN) -> int:
    """The smallest multiple of ``multiple`` that is ``>= width``.

    >>> aligned_width(429), aligned_width(432), aligned_width(1100)
    (432, 432, 1104)
    """
    return -(-int(width) // multiple) * multiple


def padded_weight(weight: torch.Tensor, width: int) -> torch.Tensor:
    """A ``[D, D]`` weight with zero rows and columns up to ``[width, width]``."""
    extra = width - weight.shape[0]
    return F.pad(weight, [0, extra, 0, extra]) if extra > 0 else weight


def padded_bias(bias: Optional[torch.Tensor], width: int) -> Optional[torch.Tensor]:
    """A ``[D]`` bias with zeros up to ``[width]``; None stays None."""
    if bias is None:
        return None
    extra = width - bias.shape[0]
    return F.pad(bias, [0, extra]) if extra > 0 else bias


class _Square(nn.Module):
    """One ``D x D`` Linear's weight and optional bias (buffers)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)


class MatrixCrossStep(nn.Module):
    """DCN-V2's ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` on inputs padded to a width ``W >= D``
    (``[B, W]`` -> ``[B, W]``)."""

    def __init__(self, linear: _Square) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[1]
        crossed = F.linear(x, padded_weight(self.linear.weight, width), padded_bias(self.linear.bias, width))
        return torch.addcmul(x, x0, crossed)


class GatedCrossStep(nn.Module):
    """GDCN's ``c_{l+1} = c_0 * (W_c c_l + b_c) * sigmoid(W_g c_l) + c_l`` on padded inputs.

    Both matrices, zero-padded, run as one ``[B, W] x [W, 2W]`` product (one pass over ``c``
    instead of two); the padded columns stay zero because the crossed part is zero there.
    """

    def __init__(self, cross: _Square, gate: _Square) -> None:
        super().__init__()
        self.cross = cross
        self.gate = gate

    def forward(self, c0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        width = c.shape[1]
        weight = torch.cat([padded_weight(self.cross.weight, width), padded_weight(self.gate.weight, width)])
        zeros = c.new_zeros(width)
        cross_bias = padded_bias(self.cross.bias, width)
        gate_bias = padded_bias(self.gate.bias, width)
        bias = torch.cat([
            cross_bias if cross_bias is not None else zeros,
            gate_bias if gate_bias is not None else zeros,
        ])
        crossed, gate = F.linear(c, weight, bias).split(width, dim=1)
        return torch.addcmul(c, c0 * crossed, torch.sigmoid(gate))


class AlignedCross(nn.Module):
    """A cross network run on ``x_0`` zero-padded to :func:`aligned_width`, sliced back at the end:
    ``[B, D]`` -> ``[B, D]``. ``steps``: :class:`MatrixCrossStep` or :class:`GatedCrossStep`."""

    def __init__(self, steps: list[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        width = x0.shape[1]
        x0 = F.pad(x0, [0, aligned_width(width) - width])
        x = x0
        for step in self.steps:
            x = step(x0, x)
        return x[:, :width]


def _square(linear: nn.Module, tensors: Tensors) -> _Square | None:
    if type(linear) is not nn.Linear:
        return None  # a swapped-in module: its own forward must run
    bias = tensors.take(linear.bias) if linear.bias is not None else None
    return _Square(tensors.take(linear.weight), bias)


def build_cross(cross: nn.Module, tensors: Tensors) -> nn.Module:
    """The inference form of a model's cross network: aligned for DCN-V2's full matrices and
    GDCN's gated layers (exact classes with plain Linears), a frozen copy otherwise (DCN's
    vector layers, DCN-V2's low-rank mixture, anything swapped in)."""
    if type(cross) is CrossNetworkV2 and all(type(layer) is MatrixCrossLayer for layer in cross.layers):
        squares = [_square(layer.linear, tensors) for layer in cross.layers]
        if all(s is not None for s in squares):
            return AlignedCross([MatrixCrossStep(square) for square in squares])
    if type(cross) is GatedCrossNetwork and all(type(layer) is GatedCrossLayer for layer in cross.layers):
        pairs = [(_square(layer.cross, tensors), _square(layer.gate, tensors)) for layer in cross.layers]
        if all(a is not None and b is not None for a, b in pairs):
            return AlignedCross([GatedCrossStep(a, b) for a, b in pairs])
    return tensors.frozen(cross)
