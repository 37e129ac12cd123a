"""Each model's deep part at inference: ``(codes [B, F, k], emb [B, F, d], numeric [B, N]) -> [B]``.

One head per model class, built from the trained model (its interaction layers as frozen
copies or faster structures, its MLP through :func:`~.dense.build_mlp`); the sum with the LR
logit is done by :class:`~.model.InferenceModel`. FiBiNet's heads live in :mod:`.fibinet`.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_afm.models.autoint import AutoInt
from lightning_afm.models.base import CTRModel
from lightning_afm.models.deepfm import DeepFM
from lightning_afm.models.nfm import NFM
from lightning_afm.models.parallel_cross import ParallelCrossModel

from .attention import build_attention
from .code_space import build_code_space
from .cross import build_cross
from .dense import build_mlp
from .sharing import Tensors


def flat_input(x: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
    """``[B, F, w]`` and ``[B, N]`` -> ``cat([x.flatten(1), numeric], 1)``, ``[B, F w + N]``."""
    flat = x.flatten(1)
    return torch.cat([flat, numeric], dim=1) if numeric.shape[1] > 0 else flat


class _MLPHead(nn.Module):
    """What every head has: the MLP, the output Linear, and whether the MLP reads the codes
    (after the embedding projections were folded into its first Linear) or the embeddings."""

    def __init__(self, model: CTRModel, tensors: Tensors) -> None:
        super().__init__()
        self.mlp = build_mlp(model.mlp, tensors)
        self.output = tensors.frozen(model.output)
        self.reads_codes = bool(model.mlp_reads_codes)


class DeepFMHead(_MLPHead):
    """``FM(e) + w^T MLP([X, numeric]) + b`` (``X``: the embeddings or, folded, the codes).

    On AFM/SVD-factored tables the FM runs on the codes (:mod:`.code_space`); with the MLP folded
    onto the codes too, the ``d``-dim embeddings are never built (``needs_embeddings`` False).
    """

    def __init__(self, model: DeepFM, tensors: Tensors) -> None:
        super().__init__(model, tensors)
        code_fm = build_code_space(model.embeddings.tables(), tensors, reduce=True)
        self.fm = code_fm if code_fm is not None else tensors.frozen(model.fm)
        self.fm_reads_codes = code_fm is not None
        self.needs_embeddings = not (self.fm_reads_codes and self.reads_codes)

    def forward(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        deep = self.output(self.mlp(flat_input(codes if self.reads_codes else emb, numeric))).squeeze(-1)
        return self.fm(codes if self.fm_reads_codes else emb) + deep


class NFMHead(_MLPHead):
    """``w^T MLP([BiInteraction(e), numeric]) + b`` (the bi-interaction dropout is off at inference)."""

    def __init__(self, model: NFM, tensors: Tensors) -> None:
        super().__init__(model, tensors)
        code_bi = build_code_space(model.embeddings.tables(), tensors, reduce=False)
        self.bi_interaction = code_bi if code_bi is not None else tensors.frozen(model.bi_interaction)
        # on factored tables the bi-interaction reads the codes and the embeddings are never built
        self.needs_embeddings = code_bi is None

    def forward(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        pooled = self.bi_interaction(emb if self.needs_embeddings else codes)
        mlp_in = torch.cat([pooled, numeric], dim=1) if numeric.shape[1] > 0 else pooled
        return self.output(self.mlp(mlp_in)).squeeze(-1)


class AutoIntHead(_MLPHead):
    """``w^T [flatten(Att^L(e)), MLP([X, numeric])] + b``, the attention in its inference form
    (:mod:`.attention`). On AFM/SVD-factored tables its first layer reads the codes; with the MLP
    folded onto the codes too, the ``d``-dim embeddings are never built (``needs_embeddings`` False).
    """

    def __init__(self, model: AutoInt, tensors: Tensors) -> None:
        super().__init__(model, tensors)
        self.attention = build_attention(model.attention, model.embeddings.tables(), tensors)
        self.needs_embeddings = not (self.attention.reads_codes and self.reads_codes)

    def forward(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        attended = self.attention(codes, emb).flatten(1)
        deep = self.mlp(flat_input(codes if self.reads_codes else emb, numeric))
        return self.output(torch.cat([attended, deep], dim=1)).squeeze(-1)


class ParallelCrossHead(_MLPHead):
    """DCNv2, GDCN (and DCN with a swapped-in cross network; DCN's own is :mod:`.cross_v1`):
    ``w^T [Cross(x_0), MLP(x_0 or the codes)] + b``, the cross network in its inference form
    (:func:`~.cross.build_cross`: aligned for DCNv2's and GDCN's square layers)."""

    def __init__(self, model: ParallelCrossModel, tensors: Tensors) -> None:
        super().__init__(model, tensors)
        self.cross = build_cross(model.cross, tensors)

    def forward(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        x0 = flat_input(emb, numeric)
        mlp_in = flat_input(codes, numeric) if self.reads_codes else x0
        return self.output(torch.cat([self.cross(x0), self.mlp(mlp_in)], dim=1)).squeeze(-1)
