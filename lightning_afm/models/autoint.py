"""AutoInt (Song et al., CIKM 2019): self-attentive field interactions plus an MLP."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..data.schema import Schema
from .base import CTRModel
from .layers.attention import InteractingLayer


class AutoInt(CTRModel):
    """``logit = LR(x) + w^T [flatten(Att^L(e)), MLP([e, numeric])] + b`` (AutoInt+).

    ``L`` interacting layers (multi-head self-attention over the ``F`` fields with
    a residual, then ReLU) run on the ``d``-dim embeddings; the MLP runs in
    parallel on the concatenated embeddings and numeric fields, and one output
    Linear reads both (DeepCTR-Torch 0.3.0's AutoInt).

    Args:
        attention_layers: interacting layers (3, DeepCTR-Torch's default; Table 2's
            Avazu count needs 3 with residual, or 4 without).
        attention_heads: heads per layer (2; the count does not depend on it).
        attention_residual: residual projection ``W_res`` (needed for Table 2).
        attention_scaled: scale attention logits by ``1/sqrt(d_head)`` (DeepCTR-Torch: no).
        **kwargs: the shared hyper-parameters of :class:`CTRModel`.

    Example:
        >>> from lightning_afm.data.schema import Schema
        >>> m = AutoInt(Schema.from_vocab_sizes([10, 20, 5]), embedding_dim=4, mlp_hidden=[8])
        >>> m(torch.zeros(3, 3, dtype=torch.long)).shape
        torch.Size([3])
    """

    MLP_READS_EMBEDDINGS = True

    def __init__(
        self,
        schema: Schema | Mapping[str, Any],
        attention_layers: int = 3,
        attention_heads: int = 2,
        attention_residual: bool = True,
        attention_scaled: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(schema, **kwargs)
        if attention_layers < 1:
            raise ValueError(f"attention_layers must be >= 1, got {attention_layers}")
        d = self.embedding_dim
        self.attention = nn.Sequential(
            *(InteractingLayer(d, attention_heads, attention_residual, attention_scaled) for _ in range(attention_layers))
        )
        self.mlp = self.make_mlp(self.flat_width)
        self.output = nn.Linear(self.num_fields * d + self.mlp.out_features, 1)

    def deep_logit(self, codes: torch.Tensor, emb: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        attended = self.attention(emb).flatten(1)
        deep = self.mlp(self.mlp_input(codes, emb, numeric))
        return self.output(torch.cat([attended, deep], dim=1)).squeeze(-1)
