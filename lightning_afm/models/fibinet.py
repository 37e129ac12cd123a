"""FiBiNet (Huang et al., RecSys 2019): SENET field importance and bilinear interactions."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..data.schema import Schema
from .base import CTRModel
from .layers.aligned import has_hooks, is_plain_linear
from .layers.bilinear import BilinearInteraction
from .layers.bilinear_codes import extended_projections, fold_pair_blocks, fold_pays, pair_code_products
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
        if torch.is_grad_enabled():
            p = self.senet_bilinear(self.senet(emb))  # [B, P, d]
            q = self.bilinear(emb)  # [B, P, d]
            parts = [p.flatten(1), q.flatten(1)] + ([numeric] if numeric.shape[1] else [])
            return self.output(self.mlp(torch.cat(parts, dim=1))).squeeze(-1)
        projections = self.foldable_projections()
        if projections is not None:
            return self._deep_logit_from_codes(codes, emb, numeric, projections)
        # Inference: both bilinear layers write straight into the MLP input, which saves
        # copying 2 P d floats per row (416 MB at Criteo's shape and batch 10000) into a concat.
        batch, _, d = emb.shape
        width = self.bilinear.num_pairs * d
        x = emb.new_empty(batch, 2 * width + numeric.shape[1])
        self.senet_bilinear(self.senet(emb), out=x[:, :width].view(batch, -1, d))
        self.bilinear(emb, out=x[:, width : 2 * width].view(batch, -1, d))
        x[:, 2 * width :] = numeric
        return self.output(self.mlp(x)).squeeze(-1)

    # -- inference on low-rank codes -------------------------------------------------
    def foldable_projections(self) -> torch.Tensor | None:
        """``[F, d, k+1]`` projections when the folded inference path applies, else None.

        It applies when every table is factored with a ``projection`` Linear (AFM/SVD's
        ``LowRankEmbedding``) of one code width ``k`` with ``(k+1)^2 < d``, the first MLP
        Linear is a plain ``nn.Linear``, and no forward hook watches a module the folded
        path would skip (a statistics pass must see the calls it hooked).
        """
        tables = self.embeddings.tables()
        if not all(hasattr(t, "projection") and hasattr(t, "codes") for t in tables):
            return None
        # Imported here: models do not depend on compression unless their tables are factored.
        from lightning_afm.compress.modules import LowRankEmbedding

        if not all(type(t).project is LowRankEmbedding.project and is_plain_linear(t.projection) for t in tables):
            return None  # the fold assumes v = projection(codes) with a plain Linear
        if len({(int(t.code_dim), int(t.embedding_dim)) for t in tables}) != 1:
            return None
        if not fold_pays(self.embedding_dim, tables[0].code_dim):
            return None
        block = self.mlp[0]
        skipped = [self.senet, self.senet_bilinear, self.bilinear, self.mlp, block]
        if not is_plain_linear(block.linear) or any(has_hooks(m) for m in skipped):
            return None
        return extended_projections(tables)

    def _deep_logit_from_codes(
        self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor, projections: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`deep_logit` with the bilinear layers and the first MLP Linear folded onto the
        codes (:mod:`.layers.bilinear_codes`): ``codes`` ``[B, F, k]``, ``emb`` ``[B, F, d]``
        (only SENET's weights are taken from it), ``numeric`` ``[B, N]`` -> ``[B]``."""
        return self.output(self.code_mlp(*self.code_mlp_input(codes, emb, numeric, projections))).squeeze(-1)

    def code_mlp_input(
        self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor, projections: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The folded path's MLP input (a transposed view), first-Linear weight and bias.

        Input columns (``B`` rows): the SENET branch's code products ``[k+1, k+1, P]`` (codes
        scaled by SENET's weights, with the scaled constant), the plain branch's products of
        codes ``[k, k, P]``, its terms linear in one field's codes ``[F, k]`` (summed over the
        pairs the field is in), and the numeric fields; the plain branch's constant term joins
        the bias. Width ``P (k+1)^2 + P k^2 + F k + N`` (4,290 at Criteo's shape, against
        10,413 bilinear outputs and numeric fields).
        """
        batch, fields, k = codes.shape
        pairs, d = self.bilinear.num_pairs, self.embedding_dim
        first = self.mlp[0].linear
        hidden = first.out_features
        blocks = first.weight[:, : 2 * pairs * d].reshape(hidden, 2, pairs, d)
        senet = fold_pair_blocks(blocks[:, 0], self.senet_bilinear, projections)  # [H, P, k+1, k+1]
        plain = fold_pair_blocks(blocks[:, 1], self.bilinear, projections)
        left, right = self.bilinear.left, self.bilinear.right
        # plain branch, terms c_i[a] * 1 and 1 * c_j[b]: summed per field
        linear = plain.new_zeros(hidden, fields, k)
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
        extended = torch.cat([by_field, codes.new_ones(1, fields, batch)])  # c^, [k+1, F, B]
        scaled = extended * self.senet.field_weights(emb).t()  # SENET scales v_i, so c^_i too
        sizes = [pairs * (k + 1) ** 2, pairs * k * k, fields * k, numeric.shape[1]]
        x_t = codes.new_empty(sum(sizes), batch)
        senet_x, plain_x, linear_x, numeric_x = x_t.split(sizes)
        pair_code_products(scaled, out=senet_x.view(k + 1, k + 1, pairs, batch))
        pair_code_products(by_field.contiguous(), out=plain_x.view(k, k, pairs, batch))
        linear_x.copy_(codes.reshape(batch, -1).t())
        numeric_x.copy_(numeric.t())
        x = x_t.t()
        return x, weight, bias

    def code_mlp(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The MLP on the folded input: ``[B, width]`` -> ``[B, H_last]``."""
        hidden = self.mlp[0].after_linear(nn.functional.linear(x, weight, bias))
        for block in list(self.mlp)[1:]:
            hidden = block(hidden)
        return hidden
