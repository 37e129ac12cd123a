"""Square ``D x D`` layers computed at a GEMM-friendly width.

CPU matrix products slow down sharply when the output width is not a multiple of the
kernels' vector block: at batch 10,000 on this project's 2-core CPU (1 thread), ``x @ W.T``
with ``W`` of ``429 x 429`` (DCNv2 / GDCN at the Criteo shape: 26 fields x 16 + 13 numeric)
took 81 ms, the same product at ``432 x 432`` 56 ms, although it does slightly more work
(``benchmarks/bench_cross_alignment.py``).
The cross networks therefore run on ``x_0`` padded with zero columns to the next multiple of
:data:`GEMM_ALIGN` and on weights padded with zero rows and columns. The padded columns stay
exactly zero through every layer (zero weight rows, zero bias, and ``x_0``'s padding is zero),
so the result, once sliced back to ``D``, is the unpadded one; parameters and checkpoints keep
their ``D x D`` shapes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import _has_forward_hooks

#: Pad square layers to a multiple of this many columns (16 float32 = one AVX-512 vector).
GEMM_ALIGN = 16


def aligned_width(width: int, multiple: int = GEMM_ALIGN) -> int:
    """The smallest multiple of ``multiple`` that is ``>= width``.

    >>> aligned_width(429), aligned_width(432), aligned_width(1100)
    (432, 432, 1104)
    """
    return -(-int(width) // multiple) * multiple


def has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run any hook: forward ones (:func:`_has_forward_hooks`)
    or backward ones, its own or global."""
    globals_ = nn.modules.module
    return bool(
        _has_forward_hooks(module)
        or module._backward_hooks
        or getattr(module, "_backward_pre_hooks", None)
        or globals_._global_backward_hooks
        or getattr(globals_, "_global_backward_pre_hooks", None)
    )


def is_plain_linear(module: nn.Module) -> bool:
    """True when ``module`` is exactly an ``nn.Linear`` with no hooks.

    Only then may a layer compute with the module's weights (padded, folded) instead of
    calling it: a swapped-in factored module, or hooks that collect statistics, must see the call.
    """
    return type(module) is nn.Linear and not has_hooks(module)


def padded_weight(linear: nn.Linear, width: int) -> torch.Tensor:
    """``linear.weight`` (``[D, D]``) with zero rows and columns up to ``[width, width]``."""
    extra = width - linear.weight.shape[0]
    weight = linear.weight
    return F.pad(weight, (0, extra, 0, extra)) if extra else weight


def padded_bias(linear: nn.Linear, width: int) -> torch.Tensor | None:
    """``linear.bias`` (``[D]``) with zeros up to ``[width]``, or ``None`` without a bias."""
    bias = linear.bias
    if bias is None:
        return None
    extra = width - bias.shape[0]
    return F.pad(bias, (0, extra)) if extra else bias


def pad_columns(x: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, D]`` -> ``[B, width]`` with zero columns on the right (``x`` itself if equal)."""
    extra = width - x.shape[-1]
    return F.pad(x, (0, extra)) if extra else x


def cross_aligned(layers: Iterable[nn.Module], x0: torch.Tensor) -> torch.Tensor:
    """Run cross layers' ``forward_aligned(x0, x)`` on ``x_0`` zero-padded to
    :func:`aligned_width`, then slice back: ``[B, D]`` -> ``[B, D]``."""
    width = x0.shape[1]
    x0 = pad_columns(x0, aligned_width(width))
    x = x0
    for layer in layers:
        x = layer.forward_aligned(x0, x)
    return x[:, :width]
