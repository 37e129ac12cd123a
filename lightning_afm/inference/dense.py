"""The MLP at inference: blocks without dropout, AFM's factored Linears with the ReLU in place."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lightning_afm.compress.modules import LowRankLinear
from lightning_afm.models.layers.mlp import MLPBlock

from .sharing import Tensors


class FactoredLinear(nn.Module):
    """``second(relu?(first(x)))`` with the ReLU overwriting ``first``'s output: that output is a
    fresh tensor nothing else holds, so no second ``[..., k]`` buffer is written.

    Shapes: ``[..., n]`` -> ``[..., m]``.
    """

    def __init__(self, first: nn.Linear, second: nn.Linear, relu: bool) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.relu = bool(relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        if self.relu:
            h = h.relu_()
        return self.second(h)


def build_linear(module: nn.Module, tensors: Tensors) -> nn.Module:
    """The inference form of a Linear slot of the MLP: a plain Linear or AFM/SVD's factored one
    as :class:`FactoredLinear`, anything else (TT, a future kind) as a frozen copy, called."""

    if type(module) is LowRankLinear and type(module.first) is nn.Linear and type(module.second) is nn.Linear:
        return FactoredLinear(tensors.frozen(module.first), tensors.frozen(module.second), module.relu)
    return tensors.frozen(module)


#: modules whose output is always a fresh tensor (never their input or a tensor they hold)
_FRESH_OUTPUT = (nn.Linear, FactoredLinear, nn.BatchNorm1d, nn.LayerNorm)


def _returns_fresh(module: Optional[nn.Module]) -> bool:
    return type(module) in _FRESH_OUTPUT and not (module._forward_hooks or module._forward_pre_hooks)


class InferenceBlock(nn.Module):
    """``relu(norm(linear(x)))``: an :class:`~lightning_afm.models.layers.mlp.MLPBlock` in eval mode
    (its dropout is the identity there). Shapes: ``[B, n]`` -> ``[B, m]``.

    The ReLU overwrites its input where that is a fresh tensor (the Linear's or the norm's
    output): an out-of-place ReLU writes a second ``[B, m]`` buffer, about 2x the ReLU's time
    (profiled against DeepCTR-Torch's NFM and AutoInt, which use in-place ReLUs).
    """

    def __init__(self, linear: nn.Module, norm: Optional[nn.Module]) -> None:
        super().__init__()
        self.linear = linear
        self.norm = norm
        self.in_place = _returns_fresh(norm) if norm is not None else _returns_fresh(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_linear(self.linear(x))

    def after_linear(self, h: torch.Tensor) -> torch.Tensor:
        """The block past its Linear, for callers that computed the Linear themselves (FiBiNet's
        fold); ``h`` must then be a fresh tensor, as a Linear's output is."""
        if self.norm is not None:
            h = self.norm(h)
        return h.relu_() if self.in_place else torch.relu(h)


def is_plain_block(block: nn.Module) -> bool:
    """Whether ``block`` is exactly an :class:`~lightning_afm.models.layers.mlp.MLPBlock` with its
    ReLU, so :class:`InferenceBlock` computes it."""
    return type(block) is MLPBlock and type(block.activation) is nn.ReLU


def build_mlp(mlp: nn.Sequential, tensors: Tensors) -> nn.Sequential:
    """``mlp`` (an :class:`~lightning_afm.models.layers.mlp.MLP`) as a Sequential of
    :class:`InferenceBlock`; a block of another class is kept as a frozen copy."""

    blocks: list[nn.Module] = []
    for block in mlp:
        if is_plain_block(block):
            norm = tensors.frozen(block.norm) if block.norm is not None else None
            blocks.append(InferenceBlock(build_linear(block.linear, tensors), norm))
        else:
            blocks.append(tensors.frozen(block))
    return nn.Sequential(*blocks)
