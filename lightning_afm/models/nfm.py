"""NFM, Neural Factorization Machine (He & Chua, SIGIR 2017)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..data.schema import Schema
from .base import CTRModel
from .layers.bi_interaction import BiInteractionPooling
from .layers.dropout import Dropout


class NFM(CTRModel):
    """``logit = LR(x) + w^T MLP([BiInteraction(e), numeric]) + b``.

    The MLP reads the ``d``-dim bi-interaction vector (and the numeric fields), not
    the embeddings, so the embedding projection cannot be folded into it
    (``MLP_READS_EMBEDDINGS = False``).

    Args:
        bi_dropout: dropout on the bi-interaction vector (DeepCTR-Torch's default 0).
        **kwargs: the shared hyper-parameters of :class:`CTRModel`.

    Example:
        >>> from lightning_afm.data.schema import Schema
        >>> m = NFM(Schema.from_vocab_sizes([10, 20], numeric=2), embedding_dim=4, mlp_hidden=[8])
        >>> m(torch.zeros(3, 2, dtype=torch.long), torch.rand(3, 2)).shape
        torch.Size([3])
    """

    MLP_READS_EMBEDDINGS = False

    def __init__(self, schema: Schema | Mapping[str, Any], bi_dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(schema, **kwargs)
        self.bi_interaction = BiInteractionPooling()
        self.bi_dropout = Dropout(bi_dropout)
        self.mlp = self.make_mlp(self.embedding_dim + self.num_numeric)
        self.output = nn.Linear(self.mlp.out_features, 1)

    def deep_logit(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        pooled = self.bi_dropout(self.bi_interaction(emb))
        mlp_in = torch.cat([pooled, numeric], dim=1) if numeric.shape[1] else pooled
        return self.output(self.mlp(mlp_in)).squeeze(-1)
