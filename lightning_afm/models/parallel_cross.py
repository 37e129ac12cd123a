"""The shape DCN, DCNv2 and GDCN share: a cross network and an MLP side by side on ``x_0``."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..data.schema import Schema
from .base import CTRModel


class ParallelCrossModel(CTRModel):
    """``logit = LR(x) + w^T [Cross(x_0), MLP(x_0)] + b`` with ``x_0 = [e_1, ..., e_F, numeric]``.

    A subclass builds its cross network in :meth:`build_cross` (``[B, D] -> [B, D]``,
    ``D = F * d + N``) from its hyper-parameters; the MLP and the output Linear are built here. When compression folds the embedding projections into
    the first MLP Linear, the MLP reads the small codes while the cross network still reads
    ``x_0`` rebuilt from the projected embeddings.
    """

    MLP_READS_EMBEDDINGS = True

    def __init__(self, schema: Schema | Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(schema, **kwargs)
        self.cross = self.build_cross(self.flat_width)
        self.mlp = self.make_mlp(self.flat_width)
        self.output = nn.Linear(self.flat_width + self.mlp.out_features, 1)

    def build_cross(self, width: int) -> nn.Module:  # pragma: no cover - subclasses override
        raise NotImplementedError

    def deep_logit(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        x0 = self.flat_input(emb, numeric)
        mlp_in = self.mlp_input(codes, emb, numeric) if self.mlp_reads_codes else x0
        return self.output(torch.cat([self.cross(x0), self.mlp(mlp_in)], dim=1)).squeeze(-1)
