"""AutoInt's interacting layer: multi-head self-attention over fields with a residual."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InteractingLayer(nn.Module):
    """``relu(MultiHead(e) + e W_res)`` over the ``F`` field embeddings (Song et al., CIKM 2019).

    As in DeepCTR-Torch 0.3.0: query/key/value/residual are ``d x d`` matrices
    without bias (``N(0, 0.05^2)`` init), the ``d`` columns are split into
    ``num_heads`` heads of ``d / num_heads``, and the attention logits are not
    scaled by ``1/sqrt(d_head)`` unless ``scaled=True``.

    Args:
        embedding_dim: ``d`` (must be divisible by ``num_heads``).
        num_heads: attention heads (DeepCTR-Torch's default 2).
        residual: add ``e W_res`` before the ReLU.
        scaled: divide attention logits by ``sqrt(d / num_heads)``.

    Shapes: ``[B, F, d]`` -> ``[B, F, d]``.

    Example:
        >>> InteractingLayer(8, num_heads=2)(torch.randn(3, 5, 8)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, embedding_dim: int, num_heads: int = 2, residual: bool = True, scaled: bool = False) -> None:
        super().__init__()
        if num_heads < 1 or embedding_dim % num_heads != 0:
            raise ValueError(
                f"embedding_dim ({embedding_dim}) must be a positive multiple of num_heads ({num_heads})"
            )
        self.num_heads = int(num_heads)
        self.head_dim = embedding_dim // num_heads
        self.scaled = bool(scaled)
        self.query = nn.Linear(embedding_dim, embedding_dim, bias=False)
        self.key = nn.Linear(embedding_dim, embedding_dim, bias=False)
        self.value = nn.Linear(embedding_dim, embedding_dim, bias=False)
        self.residual = nn.Linear(embedding_dim, embedding_dim, bias=False) if residual else None
        for p in self.parameters():
            nn.init.normal_(p, std=0.05)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, f, _ = x.shape
        return x.view(b, f, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, F, d_h]

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        b, f, d = embeddings.shape
        q, k, v = self._heads(self.query(embeddings)), self._heads(self.key(embeddings)), self._heads(self.value(embeddings))
        scale = None if self.scaled else 1.0
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # [B, H, F, d_h]
        out = out.transpose(1, 2).reshape(b, f, d)
        if self.residual is not None:
            # the sum is a fresh tensor nothing saves for backward: the ReLU may overwrite it
            # (without the residual, ``out`` may be a view of the attention's saved output)
            return (out + self.residual(embeddings)).relu_()
        return torch.relu(out)
