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

Two optional members let a factored table join the batched paths below (without
them it is called field by field, which is always correct)::

    code_rows() -> Tensor[s, k] | None  # codes(idx) == code_rows()[idx]; None: call codes
    project_all(tables, codes[B, F, k]) -> Tensor[B, F, t]  # static: all fields at once

Batched paths, giving the values of the field-by-field calls: without a graph to
record (inference, ``torch.no_grad``, frozen tables) every field's rows are gathered
straight into one ``[B, F, d]`` tensor (:func:`gather_field_rows`) instead of ``F``
lookups stacked afterwards (a copy of the whole output); when every table is of one
class with ``project_all``, all projections run as one batched product. Under
autograd every table is still called (its ``sparse`` and ``padding_idx`` gradients
stay its own business), as is any table watched by a forward hook: compression
collects its statistics with hooks.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

_INVALID = re.compile(r"[^0-9A-Za-z_]")


def _has_forward_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs forward (pre-)hooks, its own or global ones."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or getattr(_module_globals, "_global_forward_hooks", None)
        or getattr(_module_globals, "_global_forward_pre_hooks", None)
    )


def _readable_rows(table: nn.Module) -> torch.Tensor | None:
    """The tensor whose rows a lookup in ``table`` returns, when reading them directly gives the
    same values and skips no hook; else None (the table must be called).

    A plain ``nn.Embedding`` without ``max_norm`` (which renormalises rows on lookup) gives its
    weight; a factored table gives what its ``code_rows()`` gives.
    """
    if hasattr(table, "codes"):
        code_rows = getattr(table, "code_rows", None)
        return None if code_rows is None else code_rows()
    if type(table).forward is not nn.Embedding.forward or table.max_norm is not None or _has_forward_hooks(table):
        return None
    return table.weight


#: Rows of these sizes (bytes) are copied as one integer word each; see :func:`gather_field_rows`.
_WORD_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _as_words(t: torch.Tensor, word_bytes: int) -> torch.Tensor | None:
    """``t`` ``[..., d]`` (``d`` elements of ``word_bytes`` bytes in all) reinterpreted as ``[...]``
    integer words, or None where its memory layout does not allow it."""
    ratio = word_bytes // t.element_size()
    if t.stride(-1) != 1 or t.shape[-1] != ratio or t.storage_offset() % ratio:
        return None
    return t.view(_WORD_DTYPES[word_bytes]).squeeze(-1)


def gather_field_rows(tables: Sequence[nn.Module], ids: torch.Tensor) -> torch.Tensor | None:
    """Every field's looked-up rows side by side, read straight from the tables' weights:
    ``[F, B]`` ids (row ``i`` for ``tables[i]``) -> ``[B, F, d]``, equal to
    ``stack([tables[i](ids[i]) for i in range(F)], dim=1)`` (``codes`` for factored tables).

    Returns None, to have the tables called instead, when autograd would record the lookups
    (``out=`` kernels are not differentiable, and a table's ``sparse`` / ``padding_idx``
    gradients are its own business), a forward hook watches a table, a table renormalises rows
    on lookup (``max_norm``) or has no readable rows, or the rows differ in width, dtype or device.

    Each field's rows go straight into their strided ``[B, d]`` slot of the output (index_select
    accepts it as ``out``) instead of ``F`` separate results stacked afterwards. Rows of 1, 2, 4
    or 8 bytes (LR weights; 2-dim float32 codes) are gathered as single integer words: the 1-D
    gather is a load and a store per row where the 2-D one calls ``memcpy`` per row, about twice
    as fast for such small rows; the bits are copied unchanged.

    Example:
        >>> tables = [nn.Embedding(5, 3), nn.Embedding(7, 3)]
        >>> ids = torch.tensor([[0, 4], [6, 1]])  # field 0 looks up rows 0, 4; field 1 rows 6, 1
        >>> with torch.no_grad():
        ...     rows = gather_field_rows(tables, ids)
        >>> rows.shape, torch.equal(rows[:, 1], tables[1].weight[[6, 1]])
        (torch.Size([2, 2, 3]), True)
        >>> gather_field_rows(tables, ids) is None  # autograd on: the tables must be called
        True
    """
    rows = [_readable_rows(t) for t in tables]
    if not rows or any(r is None or r.dim() != 2 for r in rows):
        return None
    first = rows[0]
    if any(r.shape[1] != first.shape[1] or r.dtype != first.dtype or r.device != first.device for r in rows):
        return None
    if torch.is_grad_enabled() and any(r.requires_grad for r in rows):
        return None
    out = first.new_empty((ids.shape[1], len(rows), first.shape[1]))
    word_bytes = first.shape[1] * first.element_size()
    if word_bytes in _WORD_DTYPES:
        words = [_as_words(r, word_bytes) for r in rows]
        if all(w is not None for w in words):
            out_words = _as_words(out, word_bytes)  # [B, F]
            for i, weight in enumerate(words):
                torch.index_select(weight, 0, ids[i], out=out_words[:, i])
            return out
    for i, weight in enumerate(rows):
        torch.index_select(weight, 0, ids[i], out=out[:, i])
    return out


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
        ``codes``: ``[B, F, d]`` with ``d = t`` until a table is compressed.

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

    def codes(self, categorical: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` ids -> ``[B, F, d]`` codes (needs every field to have the same ``d``)."""
        tables = self.tables()
        # one transposing copy of the ids instead of a contiguous copy of each column per lookup
        ids = categorical.t().contiguous()  # [F, B]
        gathered = gather_field_rows(tables, ids)
        if gathered is not None:
            return gathered
        outs = []
        for i, table in enumerate(tables):
            outs.append(table.codes(ids[i]) if hasattr(table, "codes") else table(ids[i]))
        return torch.stack(outs, dim=1)

    def project(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, F, d]`` codes -> ``[B, F, t]`` vectors (identity for plain tables)."""
        if not self.is_factored:
            return codes
        tables = self.tables()
        kind = type(tables[0])
        project_all = getattr(kind, "project_all", None)
        if project_all is not None and all(type(t) is kind for t in tables):
            return project_all(tables, codes)
        outs = []
        for i, table in enumerate(tables):
            outs.append(table.project(codes[:, i]) if hasattr(table, "project") else codes[:, i])
        return torch.stack(outs, dim=1)

    def forward(self, categorical: torch.Tensor) -> torch.Tensor:
        return self.project(self.codes(categorical))
