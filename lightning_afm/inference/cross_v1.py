"""DCN's vector cross network at inference: its whole share of the logit from ONE small product.

DCN v1's cross layer (:class:`~lightning_afm.models.layers.cross.CrossNetwork`) is
``x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l``. Every layer adds a multiple of ``x_0`` and a constant
vector, so by induction ``x_l = c_l x_0 + B_l`` with a per-row scalar ``c_l`` and a vector
``B_l`` that is the same for every row::

    c_0 = 1,  B_0 = 0
    s_l = x_l . w_l = c_l (x_0 . w_l) + B_l . w_l
    c_{l+1} = c_l + s_l,   B_{l+1} = B_l + b_l          (so B_l = b_0 + ... + b_{l-1})

DCN's output Linear reads ``[x_L, MLP(...)]``; its cross part is ``w_o . x_L = c_L (x_0 . w_o) + B_L . w_o``
(``w_o``: the output weight's first ``D`` columns). So the cross network's whole contribution to
the logit needs only ``z = x_0 [w_0, ..., w_{L-1}, w_o]`` (``[B, D] x [D, L+1]``), the constants
``kappa_l = B_l . w_l`` (``kappa_L = B_L . w_o``) and ``L`` scalar steps per row
(:func:`cross_logit`): ``D (L+1)`` multiply-adds a row, where the layer-by-layer network does
``L D`` products and ``3 L D`` element-wise operations and writes ``L`` ``[B, D]`` tensors.

**In code space.** ``x_0`` is linear in whatever builds it. After AFM (or SVD) on the tables,
field ``i``'s embedding is ``e_i = P_i c_i + p_i`` (``P_i`` ``[d, k_i]``, bias ``p_i``), so with
``C = [w_0, ..., w_{L-1}, w_o]`` split into the rows of each field (``C_i``, ``[d, L+1]``) and of
the numeric fields (``C_N``)::

    z = [c_1, ..., c_F, numeric] [P_1^T C_1; ...; P_F^T C_F; C_N]  +  sum_i p_i^T C_i

one ``[B, sum_i k_i + N] x [sum_i k_i + N, L+1]`` product on the same input a folded MLP reads
(Criteo's shape: 65 x 3 multiply-adds a row instead of 429 x 3, and no 429-wide ``x_0`` at all).
Per-field ranks change only the row count of ``P_i^T C_i``.

Float32: the rewrite sums in a different order from the layer-by-layer network, so results
agree to rounding (tested to 1e-5 against the training model, and exactly, to float64 rounding,
against the recurrence in numpy). The small weights are rebuilt from the current (shared)
parameters on every call (``O(L D + sum_i k_i d L)``, nothing next to a batch): nothing derived
from the training model is kept between calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_afm.models.dcn import DCN
from lightning_afm.models.layers.cross import CrossNetwork

from .heads import ParallelCrossHead, _MLPHead, flat_input
from .projection import CodeColumns, X0Columns, build_code_columns
from .sharing import Tensors


def cross_columns(weight: torch.Tensor, out_weight: torch.Tensor) -> torch.Tensor:
    """``C = [w_0, ..., w_{L-1}, w_o]``: ``weight`` ``[L, D]`` and ``out_weight`` ``[D]`` -> ``[D, L+1]``."""
    return torch.cat([weight, out_weight.unsqueeze(0)]).t()


def cross_constants(weight: torch.Tensor, bias: torch.Tensor, out_weight: torch.Tensor) -> torch.Tensor:
    """``kappa_l = B_l . w_l`` for ``l < L`` and ``kappa_L = B_L . w_o``, ``B_l = b_0 + ... + b_{l-1}``:
    ``[L+1]`` from ``weight``, ``bias`` ``[L, D]`` and ``out_weight`` ``[D]``."""
    prefix = torch.cat([bias.new_zeros([1, bias.shape[1]]), bias.cumsum(0)])  # B_0 .. B_L, [L+1, D]
    return (prefix * torch.cat([weight, out_weight.unsqueeze(0)])).sum(1)


def cross_logit(z: torch.Tensor, constants: torch.Tensor) -> torch.Tensor:
    """``w_o . x_L`` from ``z = x_0 C`` (``[B, L+1]``) and :func:`cross_constants` (``[L+1]``): ``[B]``.

    The recurrence of the module docstring: ``s_l = c_l z_l + kappa_l``, ``c_{l+1} = c_l + s_l``,
    result ``c_L z_L + kappa_L``.
    """
    layers = z.shape[1] - 1
    by_column = z.t()  # [L+1, B]: each column one contiguous row after the copy below
    by_column = by_column.contiguous()
    scale = torch.ones_like(by_column[0])
    for layer in range(layers):
        scale = scale + (scale * by_column[layer] + constants[layer])
    return scale * by_column[layers] + constants[layers]


class VectorCrossLogit(nn.Module):
    """``w_o . CrossNetwork(x_0)`` ``[B]`` from a flat input ``x`` ``[B, w]`` that ``x_0`` is linear in:
    ``x_0`` itself with :class:`X0Columns`, the codes and numeric fields with :class:`CodeColumns`.

    Args:
        weight, bias: the cross layers' ``[L, D]`` vectors (shared).
        output_weight: the output Linear's ``[1, D + H]`` weight (shared); its first ``D``
            columns read the cross network.
        columns: maps ``C`` ``[D, L+1]`` to the weight ``[w, L+1]`` and offset ``[L+1]`` on ``x``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, output_weight: torch.Tensor, columns: nn.Module) -> None:
        super().__init__()
        if weight.dim() != 2 or weight.shape != bias.shape:
            raise ValueError(f"cross weights and biases must both be [L, D], got {tuple(weight.shape)} "
                             f"and {tuple(bias.shape)}")
        if output_weight.dim() != 2 or output_weight.shape[0] != 1 or output_weight.shape[1] < weight.shape[1]:
            raise ValueError(f"the output weight must be [1, D + H] with D = {weight.shape[1]}, "
                             f"got {tuple(output_weight.shape)}")
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.register_buffer("output_weight", output_weight, persistent=False)
        self.columns = columns
        self.width = int(weight.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_weight = self.output_weight[0, : self.width]
        weight, offset = self.columns(cross_columns(self.weight, out_weight))
        z = torch.addmm(offset, x, weight)  # x_0 [w_0 .. w_{L-1}, w_o], [B, L+1]
        return cross_logit(z, cross_constants(self.weight, self.bias, out_weight))


class DCNHead(_MLPHead):
    """DCN's deep logit ``w_o . CrossNet(x_0) + w_h . MLP(...) + b`` with the cross part from one product
    (:class:`VectorCrossLogit`), read from the codes when every table is a plain-projection
    factored table (``cross_reads_codes``), else from ``x_0``. With the MLP folded onto the codes
    too, the ``d``-dim embeddings are never built (``needs_embeddings`` False).

    Shapes: ``codes`` ``[B, F, k]`` or ``[B, sum_i k_i]``, ``emb`` ``[B, F, d]``, ``numeric`` ``[B, N]`` -> ``[B]``.
    """

    def __init__(self, model: DCN, tensors: Tensors, code_columns: CodeColumns | None) -> None:
        super().__init__(model, tensors)
        self.cross_reads_codes = code_columns is not None
        columns = code_columns if code_columns is not None else X0Columns()
        self.cross = VectorCrossLogit(
            tensors.take(model.cross.weight), tensors.take(model.cross.bias), tensors.take(model.output.weight), columns
        )
        self.cross_width = int(model.cross.in_features)
        self.needs_embeddings = not (self.cross_reads_codes and self.reads_codes)

    def forward(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        if self.cross_reads_codes:
            code_input = flat_input(codes, numeric)
            cross = self.cross(code_input)
            mlp_in = code_input if self.reads_codes else flat_input(emb, numeric)
        else:
            x0 = flat_input(emb, numeric)
            cross = self.cross(x0)
            mlp_in = flat_input(codes, numeric) if self.reads_codes else x0
        deep = F.linear(self.mlp(mlp_in), self.output.weight[:, self.cross_width :], self.output.bias)
        return cross + deep.squeeze(-1)


def build_dcn_head(model: DCN, tensors: Tensors) -> nn.Module:
    """:class:`DCNHead` when the cross network is exactly :class:`CrossNetwork` and the output a plain
    Linear; otherwise (a swapped-in module) the layer-by-layer :class:`~.heads.ParallelCrossHead`."""
    if type(model.cross) is not CrossNetwork or type(model.output) is not nn.Linear:
        return ParallelCrossHead(model, tensors)
    return DCNHead(model, tensors, build_code_columns(model.embeddings.tables(), model.embedding_dim, tensors))
