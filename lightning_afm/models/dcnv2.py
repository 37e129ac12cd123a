"""DCN-V2 (Wang et al., WWW 2021): cross layers with full weight matrices."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..data.schema import Schema
from .parallel_cross import ParallelCrossModel
from .layers.cross_v2 import CrossNetworkV2


class DCNv2(ParallelCrossModel):
    """``logit = LR(x) + w^T [CrossNetV2(x_0), MLP(x_0)] + b`` (parallel structure).

    Each cross layer is ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` with a full
    ``D x D`` matrix (DeepCTR-Torch 0.3.0's DCN with ``cross_parameterization="matrix"``,
    which the authors used: with DeepCTR-Torch's low-rank ``DCNMix`` defaults, rank 32
    and 4 experts, Criteo would have 574.69M parameters, not Table 2's 574.83M).
    ``low_rank`` switches to DCN-V2's mixture of low-rank experts.

    Args:
        cross_layers: cross layers (2; 1 or 3 would miss Table 2).
        low_rank: ``None`` (full matrices) or the rank ``r`` of each expert.
        num_experts: experts per layer when ``low_rank`` is set.
        **kwargs: the shared hyper-parameters of :class:`CTRModel`.

    Example:
        >>> from lightning_afm.data.schema import Schema
        >>> m = DCNv2(Schema.from_vocab_sizes([10, 20]), embedding_dim=4, mlp_hidden=[8], low_rank=2)
        >>> m(torch.zeros(3, 2, dtype=torch.long)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        schema: Schema | Mapping[str, Any],
        cross_layers: int = 2,
        low_rank: int | None = None,
        num_experts: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(schema, **kwargs)

    def build_cross(self, width: int) -> nn.Module:
        h = self.hparams
        return CrossNetworkV2(width, h.cross_layers, low_rank=h.low_rank, num_experts=h.num_experts)
