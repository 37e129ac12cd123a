"""Per-field embedding tables that stay addressable for compression.

Every categorical field has its own table, registered as a child module named
after the field (``embeddings.C1``, ``embeddings.site_id``...), so compression
can target a field by name and collect its statistics with a forward hook.

A table is either a plain :class:`torch.nn.Embedding` (``s x t``) or any module
with the *factored table protocol* (what AFM/SVD compression swaps in)::

    codes(idx: LongTensor[B]) -> Tensor[B, k]   # the small k-dim lookup
    project(codes: Tensor[B, k]) -> Tensor[B, t] # rebuild t-dim vectors
    forward(idx) == project(codes(idx))
    embedding_dim == t ;  code_dim == k

Models read embeddings in two steps, ``codes`` then ``project``, so that when
the projection is folded into the first MLP Linear the MLP can read the small
codes directly while interaction layers (FM, cross, attention) still get
``t``-dim vectors.

The lookups are plain module calls, stacked: faster batched structures for inference
(all fields gathered into one tensor, one batched projection product) are built from a model
by :func:`lightning_afm.inference.optimize_for_inference`.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

_INVALID = re.compile(r"[^0-9A-Za-z_]")


def module_name_for_field(name: str) -> str:
    """A field name made safe as a child-module name (no dots, not empty, not a digit first)."""
    safe = _INVALID.sub("_", str(name)) or "field"
    if safe[0].isdigit():
        safe = "f_" + safe
    return safe


class FieldEmbedding(nn.Module):
    """One embedding table per categorical field.

    Args:
        names: field names (child modules get :func:`module_name_for_field` names).
        vocab_sizes: rows per table.
        embedding_dim: ``t``, the width of every table.
        init_std: tables start from ``N(0, init_std^2)`` (DeepCTR-Torch uses 1e-4).

    Shapes:
        ``categorical``: ``[B, F]`` int64 -> ``forward``: ``[B, F, t]``;
        ``codes``: ``[B, F, d]`` with ``d = t`` until a table is compressed; ``[B, sum_i k_i]``
        once the fields' code widths differ (per-field ranks).

    Example:
        >>> emb = FieldEmbedding(["a", "b"], [10, 20], embedding_dim=4)
        >>> emb(torch.zeros(3, 2, dtype=torch.long)).shape
        torch.Size([3, 2, 4])
    """

    def __init__(
        self,
        names: Sequence[str],
        vocab_sizes: Sequence[int],
        embedding_dim: int,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__()
        if len(names) != len(vocab_sizes):
            raise ValueError(f"{len(names)} field names for {len(vocab_sizes)} vocab sizes")
        self.embedding_dim = int(embedding_dim)
        self.field_names = [str(n) for n in names]
        self.module_names: list[str] = []
        for name, size in zip(names, vocab_sizes):
            key = module_name_for_field(name)
            if key in self._modules or hasattr(self, key):
                raise ValueError(f"field {name!r} clashes with another field as module name {key!r}")
            table = nn.Embedding(int(size), self.embedding_dim)
            nn.init.normal_(table.weight, std=init_std)
            self.add_module(key, table)
            self.module_names.append(key)

    @property
    def num_fields(self) -> int:
        return len(self.module_names)

    def tables(self) -> list[nn.Module]:
        return [self._modules[k] for k in self.module_names]

    @property
    def is_factored(self) -> bool:
        return any(hasattr(t, "codes") for t in self.tables())

    @property
    def code_dims(self) -> list[int]:
        """Width of each field's codes: ``t`` for a plain table, ``k`` for a factored one."""
        return [int(getattr(t, "code_dim", t.embedding_dim)) for t in self.tables()]

    @property
    def uniform_codes(self) -> bool:
        """Whether every field's codes have one width (then :meth:`codes` is ``[B, F, d]``)."""
        return len(set(self.code_dims)) <= 1

    def codes(self, categorical: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` ids -> ``[B, F, d]`` codes when every field has the same width ``d``, else the
        fields' codes side by side, ``[B, sum_i k_i]`` (field-major: what ``flatten(1)`` of the
        uniform case gives, so an MLP reading the flattened codes reads either alike)."""
        # one transposing copy of the ids instead of a contiguous copy of each column per lookup
        ids = categorical.t().contiguous()  # [F, B]
        outs = []
        for i, table in enumerate(self.tables()):
            outs.append(table.codes(ids[i]) if hasattr(table, "codes") else table(ids[i]))
        # per-field ranks (a budgeted compression) give rows of different widths: concatenate them
        return torch.stack(outs, dim=1) if self.uniform_codes else torch.cat(outs, dim=1)

    def split_codes(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """Each field's ``[B, k_i]`` codes from :meth:`codes`' ``[B, F, d]`` or ``[B, sum_i k_i]``."""
        if codes.dim() == 3:
            return list(codes.unbind(1))
        return list(torch.split(codes, self.code_dims, dim=1))

    def project(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (``[B, F, d]`` or ``[B, sum_i k_i]``) -> ``[B, F, t]`` vectors (identity for plain tables)."""
        if not self.is_factored:
            return codes
        outs = []
        for table, c in zip(self.tables(), self.split_codes(codes)):
            outs.append(table.project(c) if hasattr(table, "project") else c)
        return torch.stack(outs, dim=1)

    def forward(self, categorical: torch.Tensor) -> torch.Tensor:
        return self.project(self.codes(categorical))
