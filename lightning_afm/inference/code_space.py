"""FM and NFM's bi-interaction computed from the codes, without building the ``d``-dim embeddings.

After AFM (or SVD) on the tables, field ``i``'s embedding is ``e_i = P_i c_i + b_i`` (``P_i``
``[d, k_i]``, codes ``c_i`` ``[k_i]``, bias ``b_i`` ``[d]``, zero without one). Both interactions
are built from two per-dimension sums (He & Chua's / Rendle's identity)::

    bi_j = 0.5 * (S_j^2 - Q_j),   S_j = sum_i e_ij,   Q_j = sum_i e_ij^2,   FM = sum_j bi_j

**The sum** is linear in the codes: ``S = A^T c + sum_i b_i`` with ``c = [c_1, ..., c_F]`` (the
flat codes, ``[sum_i k_i]``) and ``A = [P_1^T; ...; P_F^T]`` (``[sum_i k_i, d]``): one product.

**The squares** are a linear map of each field's quadratic code features. Expanding
``e_ij^2 = (sum_a P_i[j,a] c_ia + b_ij)^2``::

    Q_j = sum_i [ sum_{a<=b} s_ab P_i[j,a] P_i[j,b] c_ia c_ib  +  sum_a 2 b_ij P_i[j,a] c_ia  +  b_ij^2 ]

with ``s_ab = 1`` for ``a = b`` and 2 for ``a < b``. So with the features ``q = [c_ia c_ib]``
(``a <= b`` within each field: ``sum_i k_i (k_i + 1) / 2`` columns) and the weights
``W[(i,a,b), j] = s_ab P_i[j,a] P_i[j,b]``, ``L[(i,a), j] = 2 b_ij P_i[j,a]``, ``K_j = sum_i b_ij^2``::

    Q = W^T q + L^T c + K

``L`` shares its input with ``A``, so ``[A, L]`` is one product; ``W`` a second. For the FM the
``d`` columns of ``W`` and ``L`` are summed first (only ``sum_j Q_j`` is needed): ``d + 1``
output columns instead of ``2 d``. At Criteo's shape (``F = 26``, ``k = 2``, ``d = 16``) that is
``52 x 17 + 78 x 1`` multiply-adds per sample for the whole FM, and no ``[B, F, d]`` tensor.

The weights are rebuilt on every call from the current (shared) projections (``O(sum_i k_i^2 d)``,
nothing next to a batch), so nothing derived from the training model is kept between calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .projection import _Projection, plain_projections
from .sharing import Tensors
from .tracing import TraceAware


def pair_columns(widths: Sequence[int]) -> tuple[list[int], list[int], list[float]]:
    """The quadratic features of flat codes of per-field ``widths``: for every field and every
    ``a <= b`` of its codes, the two flat columns and the factor ``s_ab`` (1 on the diagonal, 2 off it).

    >>> pair_columns([2, 1])
    ([0, 0, 1, 2], [0, 1, 1, 2], [1.0, 2.0, 1.0, 1.0])
    """
    left: list[int] = []
    right: list[int] = []
    scale: list[float] = []
    start = 0
    for k in widths:
        for a in range(k):
            for b in range(a, k):
                left.append(start + a)
                right.append(start + b)
                scale.append(1.0 if a == b else 2.0)
        start += int(k)
    return left, right, scale


class CodeSpaceInteraction(TraceAware):
    """``[B, F, k]`` or ``[B, sum_i k_i]`` codes -> NFM's bi-interaction ``[B, d]``, or with
    ``reduce=True`` DeepFM's FM term ``[B]``; equal to the interaction of the projected embeddings.

    Built from each field's projection weight ``[d, k_i]`` and bias ``[d]`` (shared, read on
    every call). See the module docstring for the maths.
    """

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], reduce: bool) -> None:
        super().__init__()
        if not weights or len(weights) != len(biases):
            raise ValueError(f"one bias per projection weight needed, got {len(weights)} weights, {len(biases)} biases")
        self.fields = nn.ModuleList(_Projection(w, b) for w, b in zip(weights, biases))
        self.reduce = bool(reduce)
        widths = [int(w.shape[1]) for w in weights]
        left, right, scale = pair_columns(widths)
        self.register_buffer("left", torch.tensor(left), persistent=False)
        self.register_buffer("right", torch.tensor(right), persistent=False)
        self.register_buffer("scale", torch.tensor(scale, dtype=weights[0].dtype), persistent=False)
        self.register_buffer("repeats", torch.tensor(widths), persistent=False)
        self.dim = int(weights[0].shape[0])
        # [sum k, sum k]: 1 where two code columns belong to one field (the blocks of the FM's Gram matrix)
        owner = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths))
        self.register_buffer("same_field", (owner[:, None] == owner[None, :]).to(weights[0].dtype), persistent=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        flat = codes.flatten(1)  # [B, sum k] (one Flatten node when exported: reshape by the batch size takes five)
        weights: list[torch.Tensor] = []
        biases: list[torch.Tensor] = []
        for field in self.fields:
            weights.append(field.weight.t())
            biases.append(field.bias)
        a = torch.cat(weights)  # [sum k, d]
        b = torch.stack(biases)  # [F, d]
        linear = 2.0 * a * b.repeat_interleave(self.repeats, dim=0)  # L: [sum k, d]
        square = a.index_select(0, self.left) * a.index_select(0, self.right) * self.scale.unsqueeze(1)  # W
        constant = (b * b).sum(0)  # K: [d]
        if self.reduce:
            linear, square, constant = linear.sum(1, keepdim=True), square.sum(1, keepdim=True), constant.sum(0, True)
        if not torch.jit.is_scripting() and self._exporting():
            return self._one_product(flat, a, b, linear, square, constant)
        both = flat.mm(torch.cat([a, linear], dim=1))  # [B, d + (1 or d)]: S - sum b, and L^T c
        total = both[:, : self.dim] + b.sum(0)  # S
        pairs = flat.index_select(1, self.left) * flat.index_select(1, self.right)  # q: [B, sum k(k+1)/2]
        squares = torch.addmm(both[:, self.dim :], pairs, square) + constant  # Q (summed over j with reduce)
        if self.reduce:
            return 0.5 * (total.pow(2).sum(1) - squares.squeeze(1))
        return 0.5 * (total.pow(2) - squares)


    @torch.jit.unused
    def _one_product(self, flat: torch.Tensor, a: torch.Tensor, b: torch.Tensor, linear: torch.Tensor,
                     square: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
        """The same interaction for an exported graph, whose runtime pays per node at small batches:
        ``S`` and ``L^T c + K`` from ONE product with a bias (``[B, sum k] x [sum k, d + c]``, its
        weight a constant after the export's folding) and one Split.

        The FM (``reduce``) needs only ``sum_j Q_j = sum_i c_i^T G_i c_i + l^T c + K`` (``G_i = P_i^T P_i``,
        ``l = [2 P_i^T b_i]``), so the same product also carries the block-diagonal Gram matrix
        (``sum k`` more columns) and no pair features are built. NFM's bi-interaction needs each
        ``Q_j``: the pair features are gathered as rows of the transposed codes (``[P, B]``; ONNX
        Runtime gathers whole rows fast and single columns slowly) and ``Q`` is a second product.
        Both replace one-hot pair pickers in the first product (``2 P`` more output columns: 1,584
        at Avazu's shape, ``k = 8``), which made that product the costliest node after the MLP's."""
        if self.reduce:
            gram = torch.mm(a, a.t()) * self.same_field  # [sum k, sum k]
            weight = torch.cat([a, linear, gram], dim=1)
            bias = torch.cat([b.sum(0), constant, constant.new_zeros(gram.shape[1])])
            total, linear_c, quadratic = torch.addmm(bias, flat, weight).split([self.dim, 1, gram.shape[1]], dim=1)
            squares = linear_c.squeeze(1) + (quadratic * flat).sum(1)  # sum_j Q_j
            return 0.5 * ((total * total).sum(1) - squares)
        total, linear_c = torch.addmm(torch.cat([b.sum(0), constant]), flat, torch.cat([a, linear], dim=1)).split(
            [self.dim, self.dim], dim=1)
        by_code = flat.t()  # [sum k, B]
        pairs = by_code.index_select(0, self.left) * by_code.index_select(0, self.right)  # q^T: [P, B]
        squares = linear_c + torch.mm(square.t(), pairs).t()  # Q
        return 0.5 * (total * total - squares)


def build_code_space(tables: Sequence[nn.Module], tensors: Tensors, reduce: bool) -> CodeSpaceInteraction | None:
    """The code-space interaction of ``tables`` when every one is a factored table whose projection
    is a plain Linear (AFM/SVD's) into one width ``d`` (per-field ranks allowed), else None: the
    interaction then runs on the projected embeddings."""
    projections = plain_projections(tables, tensors)
    if projections is None:
        return None
    weights, biases = projections
    return CodeSpaceInteraction(weights, biases, reduce)
