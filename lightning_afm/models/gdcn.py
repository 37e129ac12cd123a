"""GDCN, Gated Deep & Cross Network (Wang et al., "Towards Deeper, Lighter and Interpretable
Cross Network for CTR Prediction", CIKM 2023)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..data.schema import Schema
from .parallel_cross import ParallelCrossModel
from .layers.gated_cross import GatedCrossNetwork


class GDCN(ParallelCrossModel):
    """GDCN-P: ``logit = LR(x) + w^T [GatedCrossNet(x_0), MLP(x_0)] + b``.

    The parallel form (GDCN-P), in which the MLP reads the embeddings as in DCN;
    the stacked form (GDCN-S) has the MLP read the cross output, which the
    compression contract (``MLP_READS_EMBEDDINGS``) and the paper's folding of
    the embedding projection into the first MLP layer rule out. Table 2 cannot
    tell the two apart (they differ by ``D`` parameters in the output layer).

    Args:
        cross_layers: gated cross layers. Table 2's counts need exactly 2 (1 gives
            574.83M on Criteo, 3 gives 575.56M).
        **kwargs: the shared hyper-parameters of :class:`CTRModel`.

    Example:
        >>> from lightning_afm.data.schema import Schema
        >>> m = GDCN(Schema.from_vocab_sizes([10, 20], numeric=2), embedding_dim=4, mlp_hidden=[8])
        >>> m(torch.zeros(3, 2, dtype=torch.long), torch.rand(3, 2)).shape
        torch.Size([3])
    """

    def __init__(self, schema: Schema | Mapping[str, Any], cross_layers: int = 2, **kwargs: Any) -> None:
        super().__init__(schema, **kwargs)

    def build_cross(self, width: int) -> nn.Module:
        return GatedCrossNetwork(width, num_layers=self.hparams.cross_layers)
