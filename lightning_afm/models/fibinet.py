"""FiBiNet (Huang et al., RecSys 2019): SENET field importance and bilinear interactions."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..data.schema import Schema
from .base import CTRModel
from .layers.bilinear import BilinearInteraction
from .layers.senet import SENETLayer


class FiBiNet(CTRModel):
    """``logit = LR(x) + w^T MLP([Bilinear_p(SENET(e)), Bilinear_q(e), numeric]) + b``.

    Two bilinear layers with their own weights, one on the SENET-reweighted
    embeddings and one on the raw ones, as in the FiBiNet paper, DeepCTR (TF) and
    the AFM authors' code. DeepCTR-Torch 0.3.0 shares one bilinear layer between
    the two; with sharing Criteo would have 578.53M parameters (Table 2: 578.62M)
    and Avazu 536.71M (Table 2: 537.29M). The MLP reads the ``2 F (F-1)/2 d``
    bilinear outputs (``MLP_READS_EMBEDDINGS = False``).

    Args:
        bilinear_type: ``field_interaction`` (one ``d x d`` matrix per field pair,
            DeepCTR-Torch's default, needed for Table 2), ``field_each`` or ``field_all``.
        reduction_ratio: SENET reduction ratio (DeepCTR-Torch's default 3; 1 to 3 fit Table 2).
        **kwargs: the shared hyper-parameters of :class:`CTRModel`.

    Example:
        >>> from lightning_afm.data.schema import Schema
        >>> m = FiBiNet(Schema.from_vocab_sizes([10, 20, 5]), embedding_dim=4, mlp_hidden=[8])
        >>> m(torch.zeros(3, 3, dtype=torch.long)).shape
        torch.Size([3])
    """

    MLP_READS_EMBEDDINGS = False

    def __init__(
        self,
        schema: Schema | Mapping[str, Any],
        bilinear_type: str = "field_interaction",
        reduction_ratio: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(schema, **kwargs)
        if self.num_fields < 2:
            raise ValueError(f"FiBiNet needs at least 2 categorical fields, the schema has {self.num_fields}")
        f, d = self.num_fields, self.embedding_dim
        self.senet = SENETLayer(f, reduction_ratio)
        self.senet_bilinear = BilinearInteraction(f, d, bilinear_type)
        self.bilinear = BilinearInteraction(f, d, bilinear_type)
        width = 2 * self.bilinear.num_pairs * d + self.num_numeric
        self.mlp = self.make_mlp(width)
        self.output = nn.Linear(self.mlp.out_features, 1)

    def deep_logit(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        p = self.senet_bilinear(self.senet(emb))  # [B, P, d]
        q = self.bilinear(emb)  # [B, P, d]
        parts = [p.flatten(1), q.flatten(1)] + ([numeric] if numeric.shape[1] else [])
        return self.output(self.mlp(torch.cat(parts, dim=1))).squeeze(-1)
