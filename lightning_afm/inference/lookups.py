"""Every field's lookup in one ``[B, F, d]`` output (``[B, sum_i k_i]`` when fields differ in rank):
the embedding codes and the LR weights.

The training model calls each table and stacks the results (a copy of the whole output after
``F`` separate lookups), because autograd needs each table's own call. Here, with nothing to
record, each field's rows are ``index_select`` -ed straight into their strided slot of one
output tensor. Rows of 1, 2, 4 or 8 bytes (the LR weights; 2-dim float32 codes) are gathered
as single integer words: the 1-D gather is a load and a store per row where the 2-D one calls
``memcpy`` per row, about twice as fast for such small rows; the bits are copied unchanged.
(TorchScript cannot reinterpret a tensor's dtype, so a scripted module gathers rows.)

Tables whose rows cannot be read directly (``max_norm`` renormalises rows on lookup, TT tables
compute them, unknown kinds) are called, through a frozen copy, as the training model calls them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Tuple

import torch
from torch import nn

from lightning_afm.compress.modules import LowRankEmbedding

from .sharing import Tensors
from .tracing import TraceAware, tracing as _tracing

#: Rows of these sizes (bytes) are copied as one word each (16 bytes: a complex128, the widest
#: element ``index_select`` copies as one value; only copied, never computed with).
_WORD_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128}


def _as_words(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` ``[..., d]`` reinterpreted as ``[...]`` integer words of ``d`` elements each, or None
    where the row size or the memory layout does not allow it (a view: the bits are shared)."""
    word_bytes = t.shape[-1] * t.element_size()
    if word_bytes not in _WORD_DTYPES or t.stride(-1) != 1 or t.storage_offset() % t.shape[-1]:
        return None
    if t.dim() > 1 and t.stride(-2) != t.shape[-1]:
        return None
    return t.view(_WORD_DTYPES[word_bytes]).squeeze(-1)


def readable_rows(table: nn.Module) -> torch.Tensor | None:
    """The ``[s, d]`` tensor whose rows a lookup in ``table`` returns (its codes, for a factored
    table), when reading them directly gives the same values; else None (it must be called).

    Exact classes only: a subclass may override what a lookup does.
    """

    if type(table) is LowRankEmbedding:
        table = table.table
    if type(table) is nn.Embedding and table.max_norm is None:
        return table.weight
    return None


class _Rows(nn.Module):
    """Holds one field's ``[s, d]`` rows (a buffer, so ``.to()`` moves it)."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("rows", rows, persistent=False)


class GatheredLookup(TraceAware):
    """``[F, B]`` ids (row ``i`` for field ``i``) -> ``[B, F, d]`` rows, gathered into one output.

    Equal to ``stack([rows[i][ids[i]] for i in range(F)], dim=1)``. Build with :func:`build_lookup`.
    """

    def __init__(self, rows: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.fields = nn.ModuleList(_Rows(r) for r in rows)
        self.width = int(rows[0].shape[1])
        # dtype and device of the output (TorchScript cannot index the ModuleList by a variable)
        self.register_buffer("like", rows[0].new_empty(0), persistent=False)
        words = [_as_words(r) for r in rows]
        self.as_words = all(w is not None for w in words)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._exporting():  # a Gather per field, stacked: [B, F, d]
            return torch.stack(self._gathered(ids), dim=1)
        if self.as_words and not torch.jit.is_scripting():
            return self._gather_words(ids)
        out = self.like.new_empty([ids.shape[1], len(self.fields), self.width])
        for i, field in enumerate(self.fields):
            torch.index_select(field.rows, 0, ids[i], out=out[:, i])
        return out

    @torch.jit.unused
    def _gather_words(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.like.new_empty((ids.shape[1], len(self.fields), self.width))
        out_words = _as_words(out)  # [B, F]
        for i, field in enumerate(self.fields):
            torch.index_select(_as_words(field.rows), 0, ids[i], out=out_words[:, i])
        return out


class FactoredPart(nn.Module):
    """Calls one half of a factored table (the factored-table protocol of
    :mod:`lightning_afm.models.layers.embedding`): ``codes(idx)`` or ``project(codes)``."""

    def __init__(self, table: nn.Module, part: str) -> None:
        super().__init__()
        if part not in ("codes", "project"):
            raise ValueError(f"part must be 'codes' or 'project', got {part!r}")
        self.table = table
        self.codes = part == "codes"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table.codes(x) if self.codes else self.table.project(x)


class CalledFields(nn.Module):
    """Each field's (frozen) module called on its slice of the input, the results stacked on
    dim 1: what the training model does, for modules without a faster form.

    Shapes: ``[F, B]`` ids (``field_dim=0``) or ``[B, F, k]`` codes (``field_dim=1``) -> ``[B, F, ...]``.
    Per-field code widths (``code_widths``, a budgeted compression): the ids' results are
    concatenated, ``[B, sum_i k_i]`` (``field_dim=0``), or the ``[B, sum_i k_i]`` codes are split
    by those widths before each call (``field_dim=1``), as the training model's
    :class:`~lightning_afm.models.layers.embedding.FieldEmbedding` does.
    """

    def __init__(self, modules: Sequence[nn.Module], field_dim: int,
                 code_widths: Sequence[int] | None = None) -> None:
        super().__init__()
        self.fields = nn.ModuleList(modules)
        self.field_dim = int(field_dim)
        # TorchScript infers an attribute's type from its value and cannot from an empty list: keep
        # a non-empty list and say with a flag whether the widths apply.
        self.per_field_widths = code_widths is not None and len(code_widths) > 0
        self.widths = [int(w) for w in code_widths] if self.per_field_widths else [0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        if self.per_field_widths and self.field_dim == 1:
            parts = torch.split(x, self.widths, dim=1)
            for i, field in enumerate(self.fields):
                outs.append(field(parts[i]))
            return torch.stack(outs, dim=1)
        for i, field in enumerate(self.fields):
            outs.append(field(x.select(self.field_dim, i)))
        return torch.cat(outs, dim=1) if self.per_field_widths else torch.stack(outs, dim=1)


class ConcatenatedLookup(TraceAware):
    """``[F, B]`` ids -> ``[B, sum_i k_i]``: fields whose rows differ in width (per-field ranks), each
    gathered straight into its columns of one output, field-major as the training model's codes.

    Equal to ``cat([rows[i][ids[i]] for i in range(F)], dim=1)``. Build with :func:`build_lookup`.
    """

    def __init__(self, rows: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.fields = nn.ModuleList(_Rows(r) for r in rows)
        widths = [int(r.shape[1]) for r in rows]
        self.offsets = [sum(widths[:i]) for i in range(len(widths) + 1)]
        self.register_buffer("like", rows[0].new_empty(0), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._exporting():  # a Gather per field, concatenated
            return torch.cat(self._gathered(ids), dim=1)
        out = self.like.new_empty([ids.shape[1], self.offsets[-1]])
        for i, field in enumerate(self.fields):
            torch.index_select(field.rows, 0, ids[i], out=out[:, self.offsets[i] : self.offsets[i + 1]])
        return out


def build_lookup(tables: Sequence[nn.Module], tensors: Tensors) -> nn.Module:
    """The fastest module giving every table's lookup (``codes`` for factored tables) side by side.

    Gathered when every table's rows are readable and share width, dtype and device; called
    otherwise (a frozen copy of each table, so the values are those of calling the tables).
    """
    if not tables:
        raise ValueError("a lookup needs at least one table")
    rows = [readable_rows(t) for t in tables]
    widths = code_widths(tables)
    uniform = len(set(widths)) == 1
    if all(r is not None for r in rows):
        first = rows[0]
        if all(r.dtype == first.dtype and r.device == first.device for r in rows):
            taken = [tensors.take(r) for r in rows]
            return GatheredLookup(taken) if uniform else ConcatenatedLookup(taken)
    return CalledFields(
        [FactoredPart(tensors.frozen(t), "codes") if hasattr(t, "codes") else tensors.frozen(t) for t in tables],
        field_dim=0, code_widths=None if uniform else widths,
    )


def code_widths(tables: Sequence[nn.Module]) -> list[int]:
    """Each table's lookup width: ``k`` (``code_dim``) of a factored table, else its ``embedding_dim``."""
    return [int(getattr(t, "code_dim", getattr(t, "embedding_dim", 0))) for t in tables]


#: The fused table's rows are padded to a multiple of this many elements. Measured with
#: ``benchmarks/bench_gather_layout.py`` (see the comment at :class:`FusedLookup`).
FUSED_ROW_MULTIPLE = 4


class FusedLookup(TraceAware):
    """``[B, F]`` ids -> ``([B, F, k]`` codes, ``[B]`` LR logit of the fields) by ONE ``index_select``.

    Every field's code rows (``[V_i, k]``: rank-``k`` codes of a factored table, ``d``-wide rows of a
    plain one) and its LR weight (``[V_i, 1]``) sit side by side in one ``[sum_i V_i, W]`` table,
    field ``i`` from row ``offsets[i]`` on, ``W = k + 1`` padded with zeros to a multiple of
    ``row_multiple``; ``ids + offsets`` flattened row-major (batch-major: sample after sample)
    gathers every field's ``[code, lr]`` row in one call, with the batch's rows already in the
    ``[B, F, W]`` order the heads read (TorchRec / FBGEMM's table-batched embedding, on CPU).

    Why this layout (``benchmarks/bench_gather_layout.py``, 1 thread, batch 10,000, Criteo shape,
    k=2): a 2-D ``index_select`` copies each row by a ``memcpy`` call, so for short rows the call
    overhead dominates and the fused gather of ``[N, 3]`` floats is *slower* than 2F per-field
    gathers of 8-byte words. Padding ``k + 1 = 3`` floats to 4 makes each row one 16-byte word
    (viewed as complex128, copied bit for bit, as :class:`GatheredLookup` does with integer words):
    the 1-D gather is then a load and a store per row, and the one gather beats the per-field ones.
    Batch-major beats field-major (which needs a transposing copy of the output for the heads);
    ``F.embedding`` and advanced indexing are slower than ``index_select``. The price: 33 % more
    table memory than ``k + 1`` at k=2. Wider rows (a baseline's ``d + 1``) are padded to the same
    multiple and gathered as rows; :func:`build_lookups` fuses only word-sized rows, since wider
    ones (a baseline's 17 floats, Avazu's k=8) measured no faster than the per-field gathers.

    The table is a **copy** of the training model's tables, built once: in-place updates of the
    training model's tables are not seen (``optimize_for_inference`` builds it only when asked to
    copy or fuse; see :mod:`.model`). A plain ``index_select`` without ``out=`` also exports to ONNX.
    Ids outside a field's vocabulary raise (they would otherwise read another field's rows), except
    in a graph an exporter or compiler traced (ONNX, ``torch.export``), which has no such branch.
    """

    def __init__(self, rows: Sequence[torch.Tensor], lr: Sequence[torch.Tensor],
                 row_multiple: int = FUSED_ROW_MULTIPLE) -> None:
        super().__init__()
        if len(rows) != len(lr) or not rows:
            raise ValueError(f"a fused lookup needs one LR table per code table, got {len(rows)} and {len(lr)}")
        widths = {int(r.shape[1]) for r in rows}
        if len(widths) != 1:
            raise ValueError(f"a fused lookup needs code rows of one width, got widths {sorted(widths)}; "
                             "per-field ranks are gathered by ConcatenatedLookup")
        for i, (r, w) in enumerate(zip(rows, lr)):
            if w.shape != (r.shape[0], 1):
                raise ValueError(f"field {i}: LR table of shape {tuple(w.shape)} for {r.shape[0]} code rows; "
                                 f"expected ({r.shape[0]}, 1)")
        self.width = widths.pop()
        sizes = [int(r.shape[0]) for r in rows]
        padded = -(-(self.width + 1) // int(row_multiple)) * int(row_multiple)
        with torch.no_grad():
            table = rows[0].new_zeros((sum(sizes), padded))
            start = 0
            for r, w in zip(rows, lr):
                table[start : start + r.shape[0], : self.width] = r
                table[start : start + r.shape[0], self.width] = w[:, 0].to(table.dtype)
                start += r.shape[0]
        self.register_buffer("table", table, persistent=False)
        self.register_buffer("offsets", torch.tensor([sum(sizes[:i]) for i in range(len(sizes))]), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes), persistent=False)
        self.num_fields = len(sizes)
        self.as_words = _as_words(table) is not None

    def forward(self, categorical: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if torch.jit.is_scripting():
            self._check_ids(categorical)
        elif not self._exporting():  # torch.export cannot follow a branch on the ids' values
            self._check_ids(categorical)
        flat = (categorical + self.offsets).reshape(-1)  # [B F]: sample after sample
        if self.as_words and not torch.jit.is_scripting():
            rows = self._gather_words(flat)
        else:  # TorchScript cannot reinterpret a dtype: the same rows, gathered as rows
            rows = torch.index_select(self.table, 0, flat)
        if not torch.jit.is_scripting() and self._exporting():
            # constant widths, the batch inferred: one Reshape node, where reading the batch size off
            # the input costs an exported graph five (Shape, Gather, Unsqueeze, Concat, Reshape)
            rows = rows.reshape(-1, self.num_fields, self.table.shape[1])
        else:  # (-1 cannot be inferred for a batch of 0 rows)
            rows = rows.view(categorical.shape[0], categorical.shape[1], self.table.shape[1])
        return rows[:, :, : self.width], rows[:, :, self.width].sum(1)

    @torch.jit.unused
    def _gather_words(self, flat: torch.Tensor) -> torch.Tensor:
        if _tracing():  # an exporter or compiler cannot follow the dtype view: gather rows
            return torch.index_select(self.table, 0, flat)
        return torch.index_select(_as_words(self.table), 0, flat).view(self.table.dtype)

    def _check_ids(self, categorical: torch.Tensor) -> None:
        if bool(((categorical < 0) | (categorical >= self.sizes)).any()):
            bad = ((categorical < 0) | (categorical >= self.sizes)).nonzero()[0]
            raise IndexError("id " + str(int(categorical[bad[0], bad[1]])) + " of field " + str(int(bad[1]))
                             + " is outside its vocabulary of " + str(int(self.sizes[bad[1]])) + " rows")


class SeparateLookups(nn.Module):
    """``[B, F]`` ids -> ``([B, F, k]`` (or ``[B, sum_i k_i]``) codes, ``[B]`` LR logit of the fields):
    the codes and the LR weights gathered (or called) by two lookups of :func:`build_lookup`,
    reading the training model's tables themselves (shared storage)."""

    def __init__(self, codes: nn.Module, lr: nn.Module) -> None:
        super().__init__()
        self.codes = codes
        self.lr = lr

    def forward(self, categorical: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        ids = categorical.t().contiguous()  # [F, B]: each field's ids contiguous
        return self.codes(ids), self.lr(ids).flatten(1).sum(1)


def fused_row_is_word(width: int, element_size: int, row_multiple: int = FUSED_ROW_MULTIPLE) -> bool:
    """Whether a fused row of ``width`` codes plus the LR weight, padded, is one word
    (:data:`_WORD_DTYPES`): only then did the fused gather measure faster than the per-field ones.

    >>> fused_row_is_word(2, 4), fused_row_is_word(3, 4), fused_row_is_word(16, 4)
    (True, True, False)
    """
    padded = -(-(int(width) + 1) // row_multiple) * row_multiple
    return padded * int(element_size) in _WORD_DTYPES


def build_lookups(tables: Sequence[nn.Module], lr_tables: Sequence[nn.Module], tensors: Tensors,
                  fuse: bool | str) -> nn.Module:
    """The module giving ``(codes, LR logit)`` for ``[B, F]`` ids: one :class:`FusedLookup` when
    ``fuse`` and every table (codes and LR) is readable with one width, dtype and device, and the
    fused row is one word (:func:`fused_row_is_word`: rank-2 or rank-3 float32 codes); else
    :class:`SeparateLookups` (per-field ranks, tables that must be called, wider rows such as a
    baseline's ``d + 1`` or Avazu's ``k = 8``, where one gather of rows did not beat the per-field
    gathers in ``benchmarks/bench_gather_layout.py``, or ``fuse=False``). ``fuse="all"`` fuses rows of
    any width: for an exported graph, whose runtime pays per node more than per copied byte at
    small batches (one Gather node instead of one per field and a Concat)."""
    if fuse not in (True, False, "all"):
        raise ValueError(f"fuse must be True, False or 'all', got {fuse!r}")
    if fuse and len(tables) == len(lr_tables) and tables:
        rows = [readable_rows(t) for t in tables]
        lr = [readable_rows(t) for t in lr_tables]
        everything = rows + lr
        if all(r is not None for r in everything) and len(set(code_widths(tables))) == 1:
            first = everything[0]
            same = all(r.dtype == first.dtype and r.device == first.device for r in everything)
            if same and (fuse == "all" or fused_row_is_word(int(first.shape[1]), first.element_size())):
                # "all" (an exported graph) unpadded: its Gather copies rows, not words, so padding would
                # only add bytes (the artifact stays the size of the model's tables)
                return FusedLookup([r.detach() for r in rows], [w.detach() for w in lr],
                                   row_multiple=1 if fuse == "all" else FUSED_ROW_MULTIPLE)
    return SeparateLookups(build_lookup(tables, tensors), build_lookup(lr_tables, tensors))
