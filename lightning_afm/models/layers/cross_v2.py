"""The cross network of DCN-V2 (Wang et al., WWW 2021): full matrices or a mixture of low-rank experts."""

from __future__ import annotations

import torch
from torch import nn



class MatrixCrossLayer(nn.Module):
    """``x_{l+1} = x_0 * (W x_l + b) + x_l`` with a full ``D x D`` matrix ``W``.

    DeepCTR-Torch 0.3.0's ``CrossNet(parameterization="matrix")`` (DCN-M):
    Xavier-normal ``W``, zero ``b``; ``D^2 + D`` parameters.

    Shapes: ``x0``, ``x`` ``[B, D]`` -> ``[B, D]``.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, in_features)
        nn.init.xavier_normal_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class LowRankMixtureCrossLayer(nn.Module):
    """DCN-V2's mixture of low-rank cross experts (DCN-Mix).

    Expert ``e``: ``E_e(x) = x_0 * (U_e tanh(C_e tanh(V_e^T x)) + b)``, with
    ``U_e, V_e`` of shape ``D x r`` and ``C_e`` of ``r x r``; a linear gate
    ``g = softmax(G x)`` mixes them: ``x_{l+1} = sum_e g_e E_e(x_l) + x_l``.
    The bias ``b`` is shared by the experts, as in DeepCTR-Torch's ``CrossNetMix``.

    Shapes: ``x0``, ``x`` ``[B, D]`` -> ``[B, D]``.
    """

    def __init__(self, in_features: int, low_rank: int, num_experts: int) -> None:
        super().__init__()
        if low_rank < 1 or num_experts < 1:
            raise ValueError(f"low_rank and num_experts must be >= 1, got {low_rank}, {num_experts}")
        d, r, e = int(in_features), int(low_rank), int(num_experts)
        self.U = nn.Parameter(torch.empty(e, d, r))
        self.V = nn.Parameter(torch.empty(e, d, r))
        self.C = nn.Parameter(torch.empty(e, r, r))
        self.gate = nn.Linear(d, e, bias=False)
        self.bias = nn.Parameter(torch.zeros(d))
        for p in (self.U, self.V, self.C):
            for i in range(e):
                nn.init.xavier_normal_(p.data[i])

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        v = torch.tanh(torch.einsum("bd,edr->ber", x, self.V))  # [B, E, r]
        v = torch.tanh(torch.einsum("ber,esr->bes", v, self.C))  # C_e v, [B, E, r]
        u = torch.einsum("bes,eds->bed", v, self.U)  # [B, E, D]
        experts = x0.unsqueeze(1) * (u + self.bias)  # [B, E, D]
        weights = torch.softmax(self.gate(x), dim=1)  # [B, E]
        return torch.einsum("be,bed->bd", weights, experts) + x


class CrossNetworkV2(nn.Module):
    """A stack of DCN-V2 cross layers on ``x_0``.

    Args:
        in_features: ``D``.
        num_layers: number of cross layers (2, DeepCTR-Torch's default, matches Table 2).
        low_rank: ``None`` for full ``D x D`` matrices (the paper's DCNv2, which is
            how Table 2's counts come out), or ``r`` for the mixture of low-rank experts.
        num_experts: experts per layer when ``low_rank`` is set.

    Shapes: ``[B, D]`` -> ``[B, D]``.

    Example:
        >>> CrossNetworkV2(6)(torch.randn(4, 6)).shape
        torch.Size([4, 6])
        >>> CrossNetworkV2(6, low_rank=2, num_experts=3)(torch.randn(4, 6)).shape
        torch.Size([4, 6])
    """

    def __init__(self, in_features: int, num_layers: int = 2, low_rank: int | None = None, num_experts: int = 4) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if low_rank is None:
            layers = [MatrixCrossLayer(in_features) for _ in range(num_layers)]
        else:
            layers = [LowRankMixtureCrossLayer(in_features, low_rank, num_experts) for _ in range(num_layers)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x
