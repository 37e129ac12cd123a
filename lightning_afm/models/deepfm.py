"""DeepFM (Guo et al., IJCAI 2017): LR + FM + MLP over the concatenated embeddings."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..data.schema import Schema
from .base import CTRModel
from .layers.fm import FactorizationMachine


class DeepFM(CTRModel):
    """``logit = LR(x) + FM(e) + w^T MLP([e_1, ..., e_F, numeric]) + b``.

    The FM term uses the ``d``-dim embeddings, the MLP reads them concatenated
    with the numeric fields (DeepCTR-Torch 0.3.0's DeepFM). Criteo at the paper's
    configuration (d=16, MLP 3 x 400): 574,457,024 parameters.

    Args: only the shared ones of :class:`CTRModel`.

    Example:
        >>> from lightning_afm.data.schema import Schema
        >>> m = DeepFM(Schema.from_vocab_sizes([10, 20], numeric=2), embedding_dim=4, mlp_hidden=[8])
        >>> m(torch.zeros(3, 2, dtype=torch.long), torch.rand(3, 2)).shape
        torch.Size([3])
    """

    MLP_READS_EMBEDDINGS = True

    def __init__(self, schema: Schema | Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(schema, **kwargs)
        self.fm = FactorizationMachine()
        self.mlp = self.make_mlp(self.flat_width)
        self.output = nn.Linear(self.mlp.out_features, 1)

    def deep_logit(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        deep = self.output(self.mlp(self.mlp_input(codes, emb, numeric))).squeeze(-1)
        return self.fm(emb) + deep
