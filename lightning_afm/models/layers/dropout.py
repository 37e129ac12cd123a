"""Dropout drawing its mask with ``rand`` instead of ``bernoulli_``."""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    """Same distribution and semantics as :class:`torch.nn.Dropout`, faster on CPU.

    Each element is kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``.
    PyTorch's CPU dropout draws the mask with ``bernoulli_``, which at batch 1000
    x 400 units costs about three times a ``rand`` draw; this layer draws
    ``rand < 1 - p``. Being an ``nn.Dropout``, code that finds dropout layers by
    type and changes ``p`` (e.g. to 0 for the paper's embedding finetune) works.

    Shapes: any -> same.

    Example:
        >>> d = Dropout(0.5).eval()
        >>> torch.equal(d(torch.ones(3)), torch.ones(3))
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        keep = 1.0 - self.p
        mask = (torch.rand_like(x) < keep).to(x.dtype).mul_(1.0 / keep)
        return x.mul_(mask) if self.inplace else x * mask
