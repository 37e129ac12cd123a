"""How the inference modules hold the training model's tensors: shared storage or a snapshot.

Every tensor an optimized module reads is taken through :class:`Tensors`: by default a
detached view of the training model's own storage (no copy: a full-size Criteo model is
2.3 GB), with ``copy=True`` a clone. Either way the inference module has its own Parameter
objects with ``requires_grad=False``, its own ``training`` flags and its own hooks, so putting
the training model in train mode, moving it with ``.to()`` or registering hooks on it leaves
the inference module alone.

Shared storage means in-place updates of the training model's values (an optimizer step,
``load_state_dict``) show in the inference module's next call. That is safe because no
inference module keeps anything derived from the values across calls: padded cross weights,
stacked projections and FiBiNet's folded weights are rebuilt from the current values on every
call (cheap next to a forward: about 10 ms of 600 for FiBiNet's fold at batch 10,000). Module
swaps on the training model (compression) are not seen: build a new inference module.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class Tensors:
    """Takes the training model's tensors for an inference module.

    Args:
        copy: clone every tensor (a snapshot, independent of the training model) instead of
            sharing its storage.
    """

    def __init__(self, copy: bool = False) -> None:
        self.copy = bool(copy)

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` detached from autograd: a view of its storage, or a clone with ``copy``."""
        t = t.detach()
        return t.clone() if self.copy else t

    def frozen(self, module: nn.Module) -> nn.Module:
        """A copy of ``module`` in eval mode whose parameters (``requires_grad=False``) and buffers
        are :meth:`take` n from it: for the parts that have no faster inference structure.

        Non-tensor state (and any hook registered on ``module`` at this moment) is copied.
        """
        memo: dict[int, torch.Tensor] = {}
        for p in module.parameters():
            memo[id(p)] = nn.Parameter(self.take(p), requires_grad=False)
        for b in module.buffers():
            memo[id(b)] = self.take(b)
        return copy.deepcopy(module, memo).eval()
