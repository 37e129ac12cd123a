"""FiBiNet at inference: bilinear outputs written straight into the MLP input, or, on low-rank
codes, both bilinear branches and the first MLP Linear folded onto products of the codes.

**The fold.** After AFM (or SVD) on the tables, field ``i``'s vector is ``v_i = U_i c_i + b_i``
with codes ``c_i`` of width ``k``; write ``c^_i = [c_i, 1]`` and ``V_i = [U_i, b_i]``
(``[d, k+1]``), so ``v_i = V_i c^_i``. A bilinear output ``p_ij = (v_i W_ij) * v_j`` is then
bilinear in the codes::

    p_ij[t] = sum_{a,b} c^_i[a] c^_j[b] L_ij[t, a] V_j[t, b],    L_ij = W_ij^T V_i   ([d, k+1])

so the first MLP Linear's block ``M_ij`` (``[H, d]``) applied to ``p_ij`` equals a block
``G_ij[h, (a, b)] = sum_t M_ij[h, t] L_ij[t, a] V_j[t, b]`` (``[H, (k+1)^2]``) applied to the
outer product ``c^_i (x) c^_j``. SENET scales ``v_i`` by a per-row ``s_i``, which is the same
as scaling ``c^_i`` by it. The MLP then reads ``(k+1)^2`` numbers per pair of the SENET branch
instead of ``d``; in the plain branch, whose codes are not rescaled, the terms linear in one
field's codes are summed per field and the constant joins the bias, leaving ``k^2`` per pair
plus ``k`` per field (:func:`code_mlp_input`). At Criteo's shape (``d = 16``, ``k = 2``) that is
4,290 inputs instead of 10,413, and no ``d x d`` bilinear products at all. It pays only while
``(k+1)^2 < d`` (not at Avazu's ``d = 50``, ``k = 8``), which :func:`fold_pays` checks.

The folded weight costs ``H P d (k+1)^2`` multiply-adds (19M per branch at Criteo's shape,
about 10 ms on one core against ~600 ms for the rest of a forward at batch 10,000), so it is
rebuilt on every call from the current (shared) parameters: nothing derived is kept.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lightning_afm.models.fibinet import FiBiNet

from .dense import InferenceBlock, build_mlp, is_plain_block
from .projection import _Projection, plain_projection, plain_projections
from .sharing import Tensors
from .tracing import TraceAware


def fold_pays(embedding_dim: int, code_dim: int) -> bool:
    """Whether reading ``(k+1)^2`` code products per pair is narrower than ``d`` bilinear outputs."""
    return (int(code_dim) + 1) ** 2 < int(embedding_dim)


def extended_projections(fields: list[torch.Tensor], biases: list[torch.Tensor]) -> torch.Tensor:
    """``V_i = [U_i, b_i]`` of every field (``U_i`` ``[d, k]``, ``b_i`` ``[d]``): ``[F, d, k+1]``."""
    return torch.cat([torch.stack(fields), torch.stack(biases).unsqueeze(2)], dim=2)


def pair_weights(weight: torch.Tensor, bilinear_type: str, left: torch.Tensor) -> torch.Tensor:
    """The ``d x d`` matrix of every pair, ``[P, d, d]``, whatever the bilinear type
    (``weight`` and ``left`` as in :class:`~lightning_afm.models.layers.bilinear.BilinearInteraction`)."""
    if bilinear_type == "field_interaction":
        return weight
    if bilinear_type == "field_each":
        return weight[left]
    return weight.expand(left.shape[0], -1, -1)  # field_all


def fold_pair_blocks(
    block: torch.Tensor, weights: torch.Tensor, left: torch.Tensor, right: torch.Tensor, projections: torch.Tensor
) -> torch.Tensor:
    """The first Linear's blocks for one bilinear branch, moved from its outputs to code products.

    Args:
        block: ``[H, P, d]``, the columns of the first MLP Linear that read this branch
            (pair-major, as the branch's ``[B, P, d]`` output is flattened).
        weights: ``[P, d, d]`` from :func:`pair_weights`; ``left``, ``right``: ``[P]`` field ids.
        projections: ``[F, d, k+1]`` from :func:`extended_projections`.

    Returns:
        ``G`` ``[H, P, k+1, k+1]``: ``block[:, p] @ p_ij == sum_{a,b} G[:, p, a, b] c^_i[a] c^_j[b]``.
    """
    lifted = torch.einsum("pst,psa->pta", weights, projections[left])  # L_ij = W_ij^T V_i, [P, d, k+1]
    basis = lifted.unsqueeze(3) * projections[right].unsqueeze(2)  # [P, d, k+1, k+1]
    pairs, dim, width = basis.shape[0], basis.shape[1], basis.shape[2]
    # [P, H, d] @ [P, d, (k+1)^2] -> [P, H, (k+1)^2], one product per pair
    folded = torch.bmm(block.transpose(0, 1), basis.reshape(pairs, dim, width * width))
    return folded.transpose(0, 1).reshape(block.shape[0], pairs, width, width)


def pair_code_products(codes: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``codes[a, i] * codes[b, j]`` for every field pair ``i < j``, written into ``out``.

    Field-major and batch-last: the pairs ``(i, i+1), ..., (i, F-1)`` are contiguous (the
    ``itertools.combinations`` order of the bilinear layers), so each left field is one
    broadcast product against the slice of fields after it, with rows of ``B`` contiguous
    numbers. (Batch-first with gathered pairs took 13x longer at Criteo's shape.)

    Args:
        codes: ``[m, F, B]`` (the codes with a row of ones, or scaled by SENET, as needed).
        out: ``[m, m, P, B]``, ``P = F (F-1) / 2``, e.g. a view into a transposed MLP input.
    """
    fields = codes.shape[1]
    start = 0
    for i in range(fields - 1):
        n = fields - 1 - i
        torch.mul(codes[:, i : i + 1].unsqueeze(1), codes[:, i + 1 :].unsqueeze(0), out=out[:, :, start : start + n])
        start += n
    return out


def gathered_pair_products(codes: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """:func:`pair_code_products` as fresh tensors, for an exporter: ``[m, F, B]`` codes, ``[P]``
    pair field ids -> ``[m, m, P, B]`` (two Gathers and one Mul in ONNX). Written into views of one
    buffer, the products exported wrongly for the ``field_each`` and ``field_all`` fold: up to 5.7e-4
    in probability against eager at d = 16, k = 2 (``field_interaction``: 4.5e-8)."""
    return codes.index_select(1, left).unsqueeze(1) * codes.index_select(1, right).unsqueeze(0)


def summed_by_field(terms: torch.Tensor, fields_of_pairs: torch.Tensor, num_fields: int) -> torch.Tensor:
    """``out[:, f] = sum of terms[:, p] over the pairs p with fields_of_pairs[p] == f``: ``[H, P, k]`` -> ``[H, F, k]``.

    ``index_add_`` does this in eager mode. Its index repeats fields, and the TorchScript-based ONNX
    exporter's scatter-add of it made the ``field_each`` and ``field_all`` fold differ from eager by
    up to 1.2e-4 in probability (d = 16, k = 2), so under an exporter's trace it is a product with
    the pairs' one-hot field matrix ``[P, F]`` (weights only: a constant ONNX Runtime folds)."""
    fields = torch.arange(num_fields, dtype=fields_of_pairs.dtype, device=fields_of_pairs.device)
    one_hot = (fields_of_pairs.unsqueeze(1) == fields.unsqueeze(0)).to(terms.dtype)  # [P, F]
    return torch.einsum("hpa,pf->hfa", terms, one_hot)


def left_blocks(weight: torch.Tensor, bilinear_type: str, num_fields: int,
                basis: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """A bilinear layer's left products ``v_i W`` as one matrix product per left field ``i < F - 1``.

    Field ``i``'s products with all its pairs' matrices are ``v_i`` times one ``[d, n_i d]`` block
    (``field_interaction``: the ``n_i = F - 1 - i`` pairs ``(i, i+1..F-1)`` side by side, in the
    layer's pair order), or times one ``[d, d]`` matrix shared by its pairs (``field_all``,
    ``field_each``). With ``basis`` (``[F, d, k+1]`` from :func:`extended_projections`) the blocks
    read the extended codes instead: ``v_i W = c^_i^T (V_i^T W)``, so block ``i`` is ``V_i^T W``
    (``[k+1, n_i d]``: ``k+1`` multiply-adds per output instead of ``d``).

    Args:
        weight: the layer's ``[n, d, d]`` weight; ``bilinear_type`` its type.
    """
    d = weight.shape[1]
    blocks: List[torch.Tensor] = []
    start = 0
    for i in range(num_fields - 1):
        n = num_fields - 1 - i
        if bilinear_type == "field_interaction":
            block = weight[start : start + n].permute(1, 0, 2).reshape(d, n * d)  # [d, n d]
        elif bilinear_type == "field_all":
            block = weight[0]
        else:  # field_each
            block = weight[i]
        blocks.append(block if basis is None else basis[i].t().mm(block))
        start += n
    return blocks


def write_bilinear(inputs: List[torch.Tensor], blocks: List[torch.Tensor], right: torch.Tensor,
                   out: torch.Tensor) -> torch.Tensor:
    """A bilinear layer's output ``(v_i W_ij) * v_j`` for every pair, written into ``out``.

    Per left field: the product ``inputs[i] @ blocks[i]`` is written straight into its pairs'
    slot of ``out`` and multiplied there, in place, by the right fields ``right[:, i+1:]`` (no
    ``[B, n_i d]`` temporary: measured 44 against 32 ms for Avazu's first left field at batch
    10,000, 1 thread, AMD EPYC, loaded machine); a matrix shared by the pairs is one ``[B, d]`` product, broadcast.

    Args:
        inputs: per left field, ``[B, m]`` (``v_i``, or the extended codes with ``basis``).
        blocks: :func:`left_blocks`. right: ``[B, F, d]``.
        out: ``[B, P d]`` (a strided view into the MLP input; the last dimension contiguous).
    """
    batch, fields, d = right.shape[0], right.shape[1], right.shape[2]
    start = 0
    for i in range(fields - 1):
        n = fields - 1 - i
        slot = out[:, start * d : (start + n) * d]
        if blocks[i].shape[1] == n * d:
            torch.mm(inputs[i], blocks[i], out=slot)
            slot.view(batch, n, d).mul_(right[:, i + 1 :])
        else:
            torch.mul(inputs[i].mm(blocks[i]).unsqueeze(1), right[:, i + 1 :], out=slot.view(batch, n, d))
        start += n
    return out


def bilinear_outputs(inputs: List[torch.Tensor], blocks: List[torch.Tensor], right: torch.Tensor) -> torch.Tensor:
    """:func:`write_bilinear`'s values as fresh tensors, for an exporter: ``[B, P d]``.

    Written into views of one buffer (``torch.mm(out=...)``), the left products on the codes were
    lost by the TorchScript-based ONNX exporter: its graph did not read the codes at all, and
    differed from eager by up to 1.2e-3 in probability (+AFM EMB at d = 4, k = 2)."""
    fields, d = right.shape[1], right.shape[2]
    parts: List[torch.Tensor] = []
    for i in range(fields - 1):
        n = fields - 1 - i
        left = inputs[i].mm(blocks[i])
        left = left.reshape(-1, n, d) if blocks[i].shape[1] == n * d else left.unsqueeze(1)
        parts.append(left * right[:, i + 1 :])
    return torch.cat(parts, dim=1).flatten(1)


class FiBiNetHead(TraceAware):
    """FiBiNet's deep logit with both bilinear layers writing into one MLP input (this saves
    copying ``2 P d`` floats per row, 416 MB at Criteo's shape and batch 10000, into a concat),
    each left product written into its slot and multiplied there (:func:`write_bilinear`).

    On factored tables of one code width (AFM/SVD's plain projections; Avazu's ``k = 8``, where
    the fold does not pay) the left products ``v_i W`` are computed from the extended codes
    (:func:`left_blocks` with a basis: ``[B, k+1] x [k+1, n_i d]`` per left field instead of
    ``[B, d] x [d, n_i d]``, 5.6x fewer multiply-adds at Avazu's shape), SENET's per-field weight
    scaling the codes; the right factor ``v_j`` stays the embedding. The blocks are rebuilt from
    the shared weights on every call (``2 P d^2 (k+1)`` multiply-adds, 10M at Avazu's shape).

    Under an exporter's trace the bilinear outputs are concatenated instead (:func:`bilinear_outputs`).

    Shapes: ``codes`` ``[B, F, k]`` (read on factored tables), ``emb`` ``[B, F, d]``, ``numeric``
    ``[B, N]`` -> ``[B]``.
    """

    def __init__(self, model: FiBiNet, tensors: Tensors) -> None:
        super().__init__()
        self.senet = tensors.frozen(model.senet)
        self.senet_bilinear = tensors.frozen(model.senet_bilinear)
        self.bilinear = tensors.frozen(model.bilinear)
        self.mlp = build_mlp(model.mlp, tensors)
        self.output = tensors.frozen(model.output)
        projections = plain_projections(model.embeddings.tables(), tensors)
        self.left_from_codes = projections is not None and len({tuple(w.shape) for w in projections[0]}) == 1
        self.projections = nn.ModuleList(
            _Projection(w, b) for w, b in (zip(*projections) if self.left_from_codes else ())
        )

    def forward(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        batch, fields, d = emb.shape[0], emb.shape[1], emb.shape[2]
        width = (fields * (fields - 1) // 2) * d
        x = emb.new_empty([batch, 2 * width + numeric.shape[1]])
        weights = self.senet.field_weights(emb)  # [B, F]
        senet = emb * weights.unsqueeze(2)
        senet_in, senet_blocks, plain_in, plain_blocks = self.left_factors(codes, emb, senet, weights)
        if not torch.jit.is_scripting() and self._exporting():
            x = torch.cat([bilinear_outputs(senet_in, senet_blocks, senet), bilinear_outputs(plain_in, plain_blocks, emb),
                           numeric], dim=1)
            return self.output(self.mlp(x)).squeeze(-1)
        write_bilinear(senet_in, senet_blocks, senet, x[:, :width])
        write_bilinear(plain_in, plain_blocks, emb, x[:, width : 2 * width])
        x[:, 2 * width :] = numeric
        return self.output(self.mlp(x)).squeeze(-1)

    def left_factors(
        self, codes: torch.Tensor, emb: torch.Tensor, senet: torch.Tensor, senet_weights: torch.Tensor
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """Per left field, the input and block of each layer's left products (SENET branch, then
        plain): ``inputs[i] @ blocks[i]`` is ``v_i W`` for field ``i``'s pairs (:func:`left_blocks`)."""
        fields = emb.shape[1]
        senet_in: List[torch.Tensor] = []
        plain_in: List[torch.Tensor] = []
        if not self.left_from_codes:
            for i in range(fields - 1):
                senet_in.append(senet[:, i])
                plain_in.append(emb[:, i])
            return (senet_in, left_blocks(self.senet_bilinear.weight, self.senet_bilinear.bilinear_type, fields),
                    plain_in, left_blocks(self.bilinear.weight, self.bilinear.bilinear_type, fields))
        weights: List[torch.Tensor] = []
        biases: List[torch.Tensor] = []
        for p in self.projections:
            weights.append(p.weight)
            biases.append(p.bias)
        basis = extended_projections(weights, biases)  # [F, d, k+1]
        # c^ field-major, [F, B, k+1], so each field's rows are one contiguous matrix
        extended = torch.cat([codes, codes.new_ones([codes.shape[0], fields, 1])], dim=2).transpose(0, 1)
        scaled = (extended * senet_weights.t().unsqueeze(2)).contiguous()  # SENET scales v_i, so c^_i too
        extended = extended.contiguous()
        for i in range(fields - 1):
            senet_in.append(scaled[i])
            plain_in.append(extended[i])
        return (senet_in, left_blocks(self.senet_bilinear.weight, self.senet_bilinear.bilinear_type, fields, basis),
                plain_in, left_blocks(self.bilinear.weight, self.bilinear.bilinear_type, fields, basis))


class FoldedFiBiNetHead(TraceAware):
    """FiBiNet's deep logit on the codes: both bilinear branches and the first MLP Linear folded
    (module docstring). Shapes as :class:`FiBiNetHead`; ``codes`` ``[B, F, k]`` is read.

    Under an exporter's trace the per-field sums and the MLP input are built without writes into
    views or repeated-index adds (:func:`summed_by_field`, :func:`gathered_pair_products`): the
    same values, which ONNX then computes as eager PyTorch does."""

    def __init__(self, model: FiBiNet, tensors: Tensors) -> None:
        super().__init__()
        self.senet = tensors.frozen(model.senet)
        self.senet_bilinear = tensors.frozen(model.senet_bilinear)
        self.bilinear = tensors.frozen(model.bilinear)
        projections = [plain_projection(t) for t in model.embeddings.tables()]
        self.projections = nn.ModuleList(
            _Projection(
                tensors.take(p.weight),
                tensors.take(p.bias) if p.bias is not None else p.weight.new_zeros(p.weight.shape[0]),
            )
            for p in projections
        )
        blocks = list(build_mlp(model.mlp, tensors))
        self.first: InferenceBlock = blocks[0]
        self.rest = nn.Sequential(*blocks[1:])
        self.output = tensors.frozen(model.output)

    def forward(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        x, weight, bias = self.code_mlp_input(codes, emb, numeric)
        hidden = self.first.after_linear(F.linear(x, weight, bias))
        return self.output(self.rest(hidden)).squeeze(-1)

    def code_mlp_input(
        self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The folded MLP input (a transposed view), first-Linear weight and bias.

        Input columns (``B`` rows): the SENET branch's code products ``[k+1, k+1, P]`` (codes
        scaled by SENET's weights, with the scaled constant), the plain branch's products of
        codes ``[k, k, P]``, its terms linear in one field's codes ``[F, k]`` (summed over the
        pairs the field is in), and the numeric fields; the plain branch's constant term joins
        the bias. Width ``P (k+1)^2 + P k^2 + F k + N`` (4,290 at Criteo's shape, against
        10,413 bilinear outputs and numeric fields).
        """
        batch = codes.shape[0]
        weights: list[torch.Tensor] = []
        biases: list[torch.Tensor] = []
        for p in self.projections:
            weights.append(p.weight)
            biases.append(p.bias)
        projections = extended_projections(weights, biases)
        # F and k from the weights, not the codes: in an exported graph the folded weight then
        # depends on constants only, and ONNX Runtime computes it once at load instead of per call
        # (read from the codes' shape: 9.1 ms a call at batch 1, Criteo's shape, AMD EPYC, one thread)
        fields, k = projections.shape[0], projections.shape[2] - 1
        left, right = self.bilinear.left, self.bilinear.right
        pairs, d = left.shape[0], projections.shape[1]
        first = self.first.linear
        hidden = first.weight.shape[0]
        blocks = first.weight[:, : 2 * pairs * d].reshape(hidden, 2, pairs, d)
        senet_w = pair_weights(self.senet_bilinear.weight, self.senet_bilinear.bilinear_type, left)
        plain_w = pair_weights(self.bilinear.weight, self.bilinear.bilinear_type, left)
        senet = fold_pair_blocks(blocks[:, 0], senet_w, left, right, projections)  # [H, P, k+1, k+1]
        plain = fold_pair_blocks(blocks[:, 1], plain_w, left, right, projections)
        exporting = not torch.jit.is_scripting() and self._exporting()
        # plain branch, terms c_i[a] * 1 and 1 * c_j[b]: summed per field
        if exporting:
            linear = summed_by_field(plain[:, :, :k, k], left, fields) + summed_by_field(plain[:, :, k, :k], right, fields)
        else:
            linear = plain.new_zeros([hidden, fields, k])
            linear.index_add_(1, left, plain[:, :, :k, k])
            linear.index_add_(1, right, plain[:, :, k, :k])
        weight = torch.cat(
            [
                senet.permute(0, 2, 3, 1).reshape(hidden, -1),
                plain[:, :, :k, :k].permute(0, 2, 3, 1).reshape(hidden, -1),
                linear.reshape(hidden, -1),
                first.weight[:, 2 * pairs * d :],
            ],
            dim=1,
        )
        bias = plain[:, :, k, k].sum(1)
        if first.bias is not None:
            bias = bias + first.bias

        # The input is built transposed, [width, B]: every product then writes rows of B
        # contiguous numbers, and the Linear reads the transposed view at full speed.
        by_field = codes.permute(2, 1, 0)  # [k, F, B]
        extended = torch.cat([by_field, codes.new_ones([1, fields, batch])])  # c^, [k+1, F, B]
        scaled = extended * self.senet.field_weights(emb).t()  # SENET scales v_i, so c^_i too
        if exporting:
            x_t = torch.cat([gathered_pair_products(scaled, left, right).flatten(0, 2),
                             gathered_pair_products(by_field, left, right).flatten(0, 2), codes.flatten(1).t(), numeric.t()])
            return x_t.t(), weight, bias
        sizes = [pairs * (k + 1) * (k + 1), pairs * k * k, fields * k, numeric.shape[1]]
        x_t = codes.new_empty([sizes[0] + sizes[1] + sizes[2] + sizes[3], batch])
        senet_x, plain_x, linear_x, numeric_x = x_t.split(sizes)
        pair_code_products(scaled, out=senet_x.view(k + 1, k + 1, pairs, batch))
        pair_code_products(by_field.contiguous(), out=plain_x.view(k, k, pairs, batch))
        linear_x.copy_(codes.reshape(batch, -1).t())
        numeric_x.copy_(numeric.t())
        return x_t.t(), weight, bias


def can_fold(model: FiBiNet) -> bool:
    """Whether :class:`FoldedFiBiNetHead` applies: every table a plain-projection factored table
    of one code width ``k`` with ``(k+1)^2 < d``, and the first MLP block a plain Linear block."""
    projections = [plain_projection(t) for t in model.embeddings.tables()]
    if not all(p is not None for p in projections):
        return False
    if len({tuple(p.weight.shape) for p in projections}) != 1:
        return False
    if not is_plain_block(model.mlp[0]) or type(model.mlp[0].linear) is not nn.Linear:
        return False
    return fold_pays(model.embedding_dim, projections[0].weight.shape[1])


def build_fibinet_head(model: FiBiNet, tensors: Tensors) -> nn.Module:
    """The folded head where it applies and pays (:func:`can_fold`), else the written one."""
    return FoldedFiBiNetHead(model, tensors) if can_fold(model) else FiBiNetHead(model, tensors)
