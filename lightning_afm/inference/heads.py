"""Each model's deep part at inference: ``(codes [B, F, k], emb [B, F, d], numeric [B, N]) -> [B]``.

One head per model class, built from the trained model (its interaction layers as frozen
copies or faster structures, its MLP through :func:`~.dense.build_mlp`); the sum with the LR
logit is done by :class:`~.model.InferenceModel`. FiBiNet's heads live in :mod:`.fibinet`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lightning_afm.models.autoint import AutoInt
from lightning_afm.models.base import CTRModel
from lightning_afm.models.deepfm import DeepFM
from lightning_afm.models.nfm import NFM
from lightning_afm.models.parallel_cross import ParallelCrossModel

from .attention import build_attention
from .code_space import build_code_space
from .cross import AlignedCross, build_cross
from .dense import build_mlp
from .projection import build_code_columns
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


class TwoPartOutput(nn.Module):
    """``w^T [a, b] + c`` -> ``[B]``: the output Linear over two parts, ``a w_a + b w_b + c`` by two
    matrix-vector products, so ``[a, b]`` (``[10000, 816]`` at AutoInt's Criteo shape) is never
    written and read back: about half the memory traffic of ``cat`` + Linear.

    Args:
        output: the trained ``nn.Linear(width_a + width_b, 1)`` (its weight taken through ``tensors``).
        width_a: the first part's width.
        tensors: how to take the weights (shared or copied).
    """

    def __init__(self, output: nn.Linear, width_a: int, tensors: Tensors) -> None:
        super().__init__()
        weight = tensors.take(output.weight)[0]  # [width_a + width_b]
        self.register_buffer("weight_a", weight[:width_a], persistent=False)
        self.register_buffer("weight_b", weight[width_a:], persistent=False)
        bias = tensors.take(output.bias) if output.bias is not None else weight.new_zeros(1)
        self.register_buffer("bias", bias, persistent=False)  # [1]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # matmul, not addmv: the TorchScript-based ONNX exporter has no addmv
        return torch.matmul(a, self.weight_a) + torch.matmul(b, self.weight_b) + self.bias


class CatOutput(nn.Module):
    """``output(cat([a, b], 1)).squeeze(-1)``: any output module, as trained (:class:`TwoPartOutput`'s fallback)."""

    def __init__(self, output: nn.Module) -> None:
        super().__init__()
        self.output = output

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.output(torch.cat([a, b], dim=1)).squeeze(-1)


def two_part_output(output: nn.Module, width_a: int, tensors: Tensors) -> nn.Module:
    """:class:`TwoPartOutput` for a plain ``nn.Linear(_, 1)``, else the module as a frozen copy over the concatenation."""
    if type(output) is nn.Linear and output.out_features == 1 and 0 < width_a < output.in_features:
        return TwoPartOutput(output, width_a, tensors)
    return CatOutput(tensors.frozen(output))


class AutoIntHead(_MLPHead):
    """``w^T [flatten(Att^L(e)), MLP([X, numeric])] + b``, the attention in its inference form
    (:mod:`.attention`), the output as :class:`TwoPartOutput`. On AFM/SVD-factored tables its first
    layer reads the codes; with the MLP folded onto the codes too, the ``d``-dim embeddings are
    never built (``needs_embeddings`` False).
    """

    def __init__(self, model: AutoInt, tensors: Tensors) -> None:
        super().__init__(model, tensors)
        self.attention = build_attention(model.attention, model.embeddings.tables(), tensors)
        self.needs_embeddings = not (self.attention.reads_codes and self.reads_codes)
        self.output = two_part_output(model.output, model.num_fields * model.embedding_dim, tensors)

    def forward(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        attended = self.attention(codes, emb).flatten(1)
        deep = self.mlp(flat_input(codes if self.reads_codes else emb, numeric))
        return self.output(attended, deep)


class _ReadsX0(nn.Module):
    """A cross network that reads only ``x_0`` (a frozen copy), called as :class:`~.cross.AlignedCross` is."""

    def __init__(self, cross: nn.Module) -> None:
        super().__init__()
        self.cross = cross

    def forward(self, x0: torch.Tensor, codes: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.cross(x0)


class ParallelCrossHead(_MLPHead):
    """DCNv2, GDCN (and DCN with a swapped-in cross network; DCN's own is :mod:`.cross_v1`):
    ``w^T [Cross(x_0), MLP(x_0 or the codes)] + b``, the cross network in its inference form
    (:func:`~.cross.build_cross`: aligned for DCNv2's and GDCN's square layers, its first product
    read off the codes on AFM/SVD-factored tables: ``cross_reads_codes``)."""

    def __init__(self, model: ParallelCrossModel, tensors: Tensors) -> None:
        super().__init__(model, tensors)
        columns = build_code_columns(model.embeddings.tables(), model.embedding_dim, tensors)
        cross = build_cross(model.cross, tensors, columns)
        self.cross_reads_codes = isinstance(cross, AlignedCross) and cross.reads_codes
        self.cross = cross if isinstance(cross, AlignedCross) else _ReadsX0(cross)
        self.reads_any_codes = self.reads_codes or self.cross_reads_codes

    def forward(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        x0 = flat_input(emb, numeric)
        if not self.reads_any_codes:
            return self._logit(self.cross(x0, None), self.mlp(x0))
        code_input = flat_input(codes, numeric)  # [B, sum_i k_i + N]
        cross = self.cross(x0, code_input if self.cross_reads_codes else None)
        return self._logit(cross, self.mlp(code_input if self.reads_codes else x0))

    def _logit(self, cross: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        return self.output(torch.cat([cross, deep], dim=1)).squeeze(-1)
