"""DCN, Deep & Cross Network (Wang et al., ADKDD 2017)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..data.schema import Schema
from .parallel_cross import ParallelCrossModel
from .layers.cross import CrossNetwork


class DCN(ParallelCrossModel):
    """``logit = LR(x) + w^T [CrossNet(x_0), MLP(x_0)] + b`` with ``x_0 = [e_1, ..., e_F, numeric]``.

    Cross network and MLP run in parallel on the same ``x_0`` and a single output
    Linear reads both (DeepCTR-Torch 0.3.0's DCN with ``cross_parameterization="vector"``).
    When the compression has made the MLP read codes, the cross network still
    reads the ``d``-dim embeddings.

    Args:
        cross_layers: vector cross layers (2, DeepCTR-Torch's default; Table 2 rounds
            the same with 2 to 6, so the count cannot pin it).
        **kwargs: the shared hyper-parameters of :class:`CTRModel`.

    Example:
        >>> from lightning_afm.data.schema import Schema
        >>> m = DCN(Schema.from_vocab_sizes([10, 20], numeric=2), embedding_dim=4, mlp_hidden=[8])
        >>> m(torch.zeros(3, 2, dtype=torch.long), torch.rand(3, 2)).shape
        torch.Size([3])
    """

    def __init__(self, schema: Schema | Mapping[str, Any], cross_layers: int = 2, **kwargs: Any) -> None:
        super().__init__(schema, **kwargs)

    def build_cross(self, width: int) -> nn.Module:
        return CrossNetwork(width, num_layers=self.hparams.cross_layers)
