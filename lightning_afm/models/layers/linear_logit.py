"""The linear (logistic-regression, "LR") part of every CTR model."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .embedding import module_name_for_field


class LinearLogit(nn.Module):
    """First-order logit: one scalar weight per categorical value plus one weight per numeric field.

    ``logit = sum_f w_f[x_f] + numeric @ v + c``

    Each categorical field has its own ``vocab_size x 1`` table (child module named
    after the field, as in :class:`FieldEmbedding`). The numeric weights are an
    ``nn.Linear(N, 1)``; its bias ``c`` exists only when there are numeric fields.

    Where the global bias lives: in each model's output ``nn.Linear(h, 1)`` (the
    layer after the MLP), which always has a bias. The numeric ``nn.Linear`` keeps
    its own bias too; that scalar is redundant with the global one but it is what
    the parameter counts of the paper's Table 2 contain: DeepFM on Criteo has
    574,457,024 parameters here, one more than DeepCTR-Torch 0.3.0 (whose numeric
    weight has no bias), and DeepFM on Avazu (no numeric fields) 492,129,696.

    Args:
        names: categorical field names.
        vocab_sizes: rows of each field's table.
        num_numeric: ``N``, the number of numeric fields (0 allowed).
        init_std: tables start from ``N(0, init_std^2)`` (DeepCTR-Torch's 1e-4).

    Shapes:
        ``categorical`` ``[B, F]`` int64, ``numeric`` ``[B, N]`` -> ``[B]``.
        :meth:`lookup` gives the looked-up weights ``[B, F]`` (what the L2 term
        penalises); :meth:`combine` turns them and ``numeric`` into the logit.

    Example:
        >>> lr = LinearLogit(["a", "b"], [5, 7], num_numeric=3)
        >>> lr(torch.zeros(4, 2, dtype=torch.long), torch.rand(4, 3)).shape
        torch.Size([4])
    """

    def __init__(
        self,
        names: Sequence[str],
        vocab_sizes: Sequence[int],
        num_numeric: int = 0,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__()
        if len(names) != len(vocab_sizes):
            raise ValueError(f"{len(names)} field names for {len(vocab_sizes)} vocab sizes")
        if num_numeric < 0:
            raise ValueError(f"num_numeric must be >= 0, got {num_numeric}")
        self.module_names: list[str] = []
        for name, size in zip(names, vocab_sizes):
            key = module_name_for_field(name)
            if key in self._modules or hasattr(self, key):
                raise ValueError(f"field {name!r} clashes with another field as module name {key!r}")
            table = nn.Embedding(int(size), 1)
            nn.init.normal_(table.weight, std=init_std)
            self.add_module(key, table)
            self.module_names.append(key)
        self.num_numeric = int(num_numeric)
        self.numeric = nn.Linear(self.num_numeric, 1) if self.num_numeric > 0 else None
        if self.numeric is not None:
            nn.init.normal_(self.numeric.weight, std=init_std)
            nn.init.zeros_(self.numeric.bias)

    def tables(self) -> list[nn.Embedding]:
        return [self._modules[k] for k in self.module_names]

    def lookup(self, categorical: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` ids -> ``[B, F]`` first-order weights of the looked-up values."""
        if not self.module_names:
            return categorical.new_zeros((categorical.shape[0], 0), dtype=torch.float32)
        ids = categorical.t().contiguous()  # [F, B]: one copy instead of one per column
        # each table maps [B] ids to [B, 1]; side by side they are the [B, F] weights
        return torch.cat([t(ids[i]) for i, t in enumerate(self.tables())], dim=1)

    def combine(self, weights: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        """Looked-up weights ``[B, F]`` and numeric ``[B, N]`` -> logit ``[B]``."""
        logit = weights.sum(dim=1)
        if self.numeric is not None:
            logit = logit + self.numeric(numeric).squeeze(-1)
        return logit

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return self.combine(self.lookup(categorical), numeric)
