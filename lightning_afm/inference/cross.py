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

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lightning_afm.models.layers.cross_v2 import CrossNetworkV2, MatrixCrossLayer
from lightning_afm.models.layers.gated_cross import GatedCrossLayer, GatedCrossNetwork

from .projection import CodeColumns, X0Columns
from .sharing import Tensors
from .tracing import TraceAware

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

    def product(self, width: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The step's Linear padded to ``width``: weight ``[W, W]``, bias ``[W]`` or None."""
        return padded_weight(self.linear.weight, width), padded_bias(self.linear.bias, width)

    def combine(self, x0: torch.Tensor, x: torch.Tensor, crossed: torch.Tensor) -> torch.Tensor:
        """``x_{l+1}`` from ``crossed = W_l x_l + b_l``."""
        return torch.addcmul(x, x0, crossed)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.product(x.shape[1])
        return self.combine(x0, x, F.linear(x, weight, bias))


class GatedCrossStep(nn.Module):
    """GDCN's ``c_{l+1} = c_0 * (W_c c_l + b_c) * sigmoid(W_g c_l) + c_l`` on padded inputs.

    Both matrices, zero-padded, run as one ``[B, W] x [W, 2W]`` product (one pass over ``c``
    instead of two); the padded columns stay zero because the crossed part is zero there.
    """

    def __init__(self, cross: _Square, gate: _Square) -> None:
        super().__init__()
        self.cross = cross
        self.gate = gate

    def product(self, width: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Both Linears padded to ``width`` and stacked: weight ``[2W, W]``, bias ``[2W]``."""
        weight = torch.cat([padded_weight(self.cross.weight, width), padded_weight(self.gate.weight, width)])
        zeros = weight.new_zeros(width)
        cross_bias = padded_bias(self.cross.bias, width)
        gate_bias = padded_bias(self.gate.bias, width)
        bias = torch.cat([
            cross_bias if cross_bias is not None else zeros,
            gate_bias if gate_bias is not None else zeros,
        ])
        return weight, bias

    def combine(self, c0: torch.Tensor, c: torch.Tensor, both: torch.Tensor) -> torch.Tensor:
        """``c_{l+1}`` from ``both = [W_c c_l + b_c, W_g c_l + b_g]``."""
        crossed, gate = both.split(c.shape[1], dim=1)
        return torch.addcmul(c, c0 * crossed, torch.sigmoid(gate))

    def forward(self, c0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        weight, bias = self.product(c.shape[1])
        return self.combine(c0, c, F.linear(c, weight, bias))


class AlignedCross(TraceAware):
    """A cross network run on ``x_0`` zero-padded to :func:`aligned_width`, sliced back at the end:
    ``[B, D]`` -> ``[B, D]``. ``steps``: :class:`MatrixCrossStep` or :class:`GatedCrossStep`.

    **The first product on the codes.** The first step's product reads ``x_0`` itself, and ``x_0``
    is linear in the codes and numeric fields (``e_i = P_i c_i + p_i``), so with ``columns`` (a
    :class:`~.projection.CodeColumns`) and the codes given, ``x_0 W_0^T`` is computed as
    ``[c, numeric] [P_1^T W_{0,1}^T; ...; W_{0,N}^T] + sum_i p_i^T W_{0,i}^T``: ``sum_i k_i + N``
    input columns instead of ``D`` (Avazu's shape: 176 instead of 1,100; Criteo's: 65 instead of
    429), exact up to float rounding. Its weight is rebuilt from the shared parameters per call
    (``sum_i k_i d W`` multiply-adds), so it is used only where that costs less than it saves,
    from :attr:`fold_min_rows` rows on, and always in an exported graph (the weight is then a
    constant). Later steps read ``x_l``, which is not linear in the codes.
    """

    def __init__(self, steps: list[nn.Module], columns: Optional[CodeColumns] = None, width: int = 0) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.reads_codes = columns is not None
        self.columns = columns if columns is not None else X0Columns()
        self.fold_min_rows = 0
        if columns is not None:
            code_inputs = columns.code_width + (width - columns.num_fields * columns.dim)  # sum_i k_i + N
            saved = max(width - code_inputs, 1)  # input columns the fold saves per row and output
            self.fold_min_rows = -(-columns.code_width * columns.dim // saved)  # rebuilding the weight costs sum k d

    def forward(self, x0: torch.Tensor, codes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x0`` ``[B, D]``; ``codes``: ``[c_1, ..., c_F, numeric]`` ``[B, sum_i k_i + N]`` when the
        network reads its first product off them (:attr:`reads_codes`), else None."""
        width = x0.shape[1]
        padded = aligned_width(width)
        x0 = F.pad(x0, [0, padded - width])
        x = x0
        first = True
        for step in self.steps:
            weight, bias = step.product(padded)
            if first and codes is not None and self._fold(codes.shape[0]):
                on_codes, offset = self.columns(weight[:, :width].t())  # [sum k + N, O], [O]
                crossed = torch.addmm(offset if bias is None else bias + offset, codes, on_codes)
            else:
                crossed = F.linear(x, weight, bias)
            x = step.combine(x0, x, crossed)
            first = False
        return x[:, :width]

    def _fold(self, rows: int) -> bool:
        if not torch.jit.is_scripting() and self._exporting():
            return self.reads_codes  # the rebuilt weight is a constant of the graph
        return self.reads_codes and rows >= self.fold_min_rows


def _square(linear: nn.Module, tensors: Tensors) -> _Square | None:
    if type(linear) is not nn.Linear:
        return None  # a swapped-in module: its own forward must run
    bias = tensors.take(linear.bias) if linear.bias is not None else None
    return _Square(tensors.take(linear.weight), bias)


def build_cross(cross: nn.Module, tensors: Tensors, columns: Optional[CodeColumns] = None) -> nn.Module:
    """The inference form of a model's cross network: aligned for DCN-V2's full matrices and
    GDCN's gated layers (exact classes with plain Linears), its first product on the codes where
    ``columns`` (:func:`~.projection.build_code_columns`) is given, a frozen copy otherwise (DCN's
    vector layers, DCN-V2's low-rank mixture, anything swapped in)."""
    steps: list[nn.Module] = []
    width = 0
    if type(cross) is CrossNetworkV2 and all(type(layer) is MatrixCrossLayer for layer in cross.layers):
        squares = [_square(layer.linear, tensors) for layer in cross.layers]
        if all(s is not None for s in squares):
            steps = [MatrixCrossStep(square) for square in squares]
            width = int(cross.layers[0].linear.in_features)
    if type(cross) is GatedCrossNetwork and all(type(layer) is GatedCrossLayer for layer in cross.layers):
        pairs = [(_square(layer.cross, tensors), _square(layer.gate, tensors)) for layer in cross.layers]
        if all(a is not None and b is not None for a, b in pairs):
            steps = [GatedCrossStep(a, b) for a, b in pairs]
            width = int(cross.layers[0].cross.in_features)
    if not steps:
        return tensors.frozen(cross)
    return AlignedCross(steps, columns, width)
