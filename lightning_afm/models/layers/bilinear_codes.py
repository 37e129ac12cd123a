"""FiBiNet's bilinear interactions and first MLP Linear folded onto low-rank embedding codes.

After AFM (or SVD) on the tables, field ``i``'s vector is ``v_i = U_i c_i + b_i`` with codes
``c_i`` of width ``k``; write ``c^_i = [c_i, 1]`` and ``V_i = [U_i, b_i]`` (``[d, k+1]``), so
``v_i = V_i c^_i``. A bilinear output ``p_ij = (v_i W_ij) * v_j`` is then bilinear in the
codes::

    p_ij[t] = sum_{a,b} c^_i[a] c^_j[b] L_ij[t, a] V_j[t, b],    L_ij = W_ij^T V_i   ([d, k+1])

so the first MLP Linear's block ``M_ij`` (``[H, d]``) applied to ``p_ij`` equals a block
``G_ij[h, (a, b)] = sum_t M_ij[h, t] L_ij[t, a] V_j[t, b]`` (``[H, (k+1)^2]``) applied to the
outer product ``c^_i (x) c^_j``. SENET scales ``v_i`` by a per-row ``s_i``, which is the same
as scaling ``c^_i`` by it. The MLP then reads ``(k+1)^2`` numbers per pair of the SENET branch
instead of ``d``; in the plain branch, whose codes are not rescaled, the terms linear in one
field's codes are summed per field and the constant joins the bias, leaving ``k^2`` per pair
plus ``k`` per field (:meth:`FiBiNet.code_mlp_input`). At Criteo's shape (``d = 16``,
``k = 2``) that is 4,290 inputs instead of 10,413, and no ``d x d`` bilinear products at all.
It pays only while ``(k+1)^2 < d`` (not at Avazu's ``d = 50``, ``k = 8``), which
:func:`fold_pays` checks.

The folded weight costs ``H P d (k+1)^2`` multiply-adds (19M per branch at Criteo's shape,
about 10 ms on one core against ~600 ms for the rest of a forward at batch 10,000), so it is
rebuilt on every call from the current parameters: nothing is cached, stored or trained
differently, and parameter counts and checkpoints are those of the unfolded model.
"""

from __future__ import annotations

import torch
from torch import nn

from .bilinear import BilinearInteraction


def fold_pays(embedding_dim: int, code_dim: int) -> bool:
    """Whether reading ``(k+1)^2`` code products per pair is narrower than ``d`` bilinear outputs."""
    return (int(code_dim) + 1) ** 2 < int(embedding_dim)


def extended_projections(tables: list[nn.Module]) -> torch.Tensor:
    """``V_i = [U_i, b_i]`` of every factored table, ``[F, d, k+1]`` (zero column without a bias).

    Each table must be a factored table whose ``project`` is its ``projection`` Linear
    (:class:`~lightning_afm.compress.modules.LowRankEmbedding`).
    """
    blocks = []
    for table in tables:
        proj: nn.Linear = table.projection
        bias = proj.bias if proj.bias is not None else proj.weight.new_zeros(proj.weight.shape[0])
        blocks.append(torch.cat([proj.weight, bias[:, None]], dim=1))
    return torch.stack(blocks)


def pair_weights(bilinear: BilinearInteraction) -> torch.Tensor:
    """The ``d x d`` matrix of every pair, ``[P, d, d]``, whatever the bilinear type."""
    weight = bilinear.weight
    if bilinear.bilinear_type == "field_interaction":
        return weight
    if bilinear.bilinear_type == "field_each":
        return weight[bilinear.left]
    return weight.expand(bilinear.num_pairs, -1, -1)  # field_all


def fold_pair_blocks(block: torch.Tensor, bilinear: BilinearInteraction, projections: torch.Tensor) -> torch.Tensor:
    """The first Linear's blocks for one bilinear branch, moved from its outputs to code products.

    Args:
        block: ``[H, P, d]``, the columns of the first MLP Linear that read this branch
            (pair-major, as the branch's ``[B, P, d]`` output is flattened).
        bilinear: the branch's :class:`BilinearInteraction`.
        projections: ``[F, d, k+1]`` from :func:`extended_projections`.

    Returns:
        ``G`` ``[H, P, k+1, k+1]``: ``block[:, p] @ p_ij == sum_{a,b} G[:, p, a, b] c^_i[a] c^_j[b]``.
    """
    weights = pair_weights(bilinear)  # [P, d(s), d(t)]
    left = projections[bilinear.left]  # [P, d(s), k+1]
    right = projections[bilinear.right]  # [P, d(t), k+1]
    lifted = torch.einsum("pst,psa->pta", weights, left)  # L_ij = W_ij^T V_i, [P, d, k+1]
    basis = lifted[:, :, :, None] * right[:, :, None, :]  # [P, d, k+1, k+1]
    pairs, dim, width = basis.shape[:3]
    # [P, H, d] @ [P, d, (k+1)^2] -> [P, H, (k+1)^2], one product per pair
    folded = torch.bmm(block.transpose(0, 1), basis.reshape(pairs, dim, -1))
    return folded.transpose(0, 1).reshape(block.shape[0], pairs, width, width)


def pair_code_products(codes: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``codes[a, i] * codes[b, j]`` for every field pair ``i < j``, written into ``out``.

    Field-major and batch-last: the pairs ``(i, i+1), ..., (i, F-1)`` are contiguous (the
    ``itertools.combinations`` order of :class:`BilinearInteraction`), so each left field
    is one broadcast product against the slice of fields after it, with rows of ``B``
    contiguous numbers. (Batch-first with gathered pairs took 13x longer at Criteo's shape.)

    Args:
        codes: ``[m, F, B]`` (the codes with a row of ones, or scaled by SENET, as needed).
        out: ``[m, m, P, B]``, ``P = F (F-1) / 2``, e.g. a view into a transposed MLP input.
    """
    fields = codes.shape[1]
    start = 0
    for i in range(fields - 1):
        n = fields - 1 - i
        torch.mul(codes[:, None, i : i + 1], codes[None, :, i + 1 :], out=out[:, :, start : start + n])
        start += n
    return out
