"""GDCN, Gated Deep & Cross Network (Wang et al., "Towards Deeper, Lighter and Interpretable
Cross Network for CTR Prediction", CIKM 2023)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..data.schema import Schema
from .base import CTRModel
from .layers.gated_cross import GatedCrossNetwork
from .layers.mlp import MLP


class GDCN(CTRModel):
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

    MLP_READS_EMBEDDINGS = True

    def __init__(self, schema: Schema | Mapping[str, Any], cross_layers: int = 2, **kwargs: Any) -> None:
        super().__init__(schema, **kwargs)
        self.cross = GatedCrossNetwork(self.flat_width, num_layers=cross_layers)
        self.mlp = MLP(self.flat_width, self.hparams.mlp_hidden, self.hparams.dropout, self.hparams.batch_norm)
        self.output = nn.Linear(self.flat_width + self.mlp.out_features, 1)

    def deep_logit(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        x0 = self.flat_input(emb, numeric)
        mlp_in = self.mlp_input(codes, emb, numeric) if self.mlp_reads_codes else x0
        return self.output(torch.cat([self.cross(x0), self.mlp(mlp_in)], dim=1)).squeeze(-1)
