"""Kind ``"qr_embedding"``: an ``nn.Embedding`` becomes a :class:`QREmbedding` (the QR trick), method ``"qr"``.

The entry's rank is the number of collisions ``m`` (ids per quotient row, >= 2; not bounded by
the width). Options (a stage's ``build_options``): ``qr_operation`` (``"mult"``, Shi et al.'s
default, or ``"add"``) and ``qr_init`` (``"random"``, Shi et al.'s fresh start at the table's
own scale, or ``"table"``, the bucket means of the trained table); both are recorded in the
entry's flags. A stage takes only the tables QR makes smaller (:func:`select_qr_tables`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from lightning_afm.compress.kinds.table_checks import checked_table
from lightning_afm.compress.kinds.table_kind import TableKind
from lightning_afm.compress.plan import PlanEntry
from lightning_afm.compress.qr import QR_INITS, QR_OPERATIONS, QREmbedding, qr_rows, qr_saves
from lightning_afm.compress.registry import Structure
from lightning_afm.compress.surgery import compress_targets, get_submodule

__all__ = ["QREmbeddingKind", "compress_embeddings_qr", "select_qr_tables"]


def select_qr_tables(model: nn.Module, names: Sequence[str], collisions: int) -> list[str]:
    """The tables of ``names`` that QR makes smaller (:func:`qr_saves`), in ``names`` order; the others stay dense.

    Raises:
        ValueError: a name is not a table QR can replace, or no table has enough rows for
            ``collisions`` to save anything.
    """
    sizes = {name: checked_table(model, name, "QR").num_embeddings for name in names}
    chosen = [name for name in names if qr_saves(sizes[name], collisions)]
    if not chosen:
        raise ValueError(f"no table is smaller as QR tables with {collisions} collisions (the largest of {len(sizes)} "
                         f"has {max(sizes.values(), default=0)} rows); lower the collisions (the stage's rank)")
    return chosen


class QREmbeddingKind(TableKind):
    name = "qr_embedding"
    method = "qr"
    produces = QREmbedding

    def rank_problem(self, module: nn.Module, rank: int) -> str | None:
        if rank < 2:
            return f"QR's rank is the number of collisions, which must be >= 2 (1 would leave the table as it is), got {rank}"
        return None

    def select_targets(self, model: nn.Module, names: list[str], rank: int,
                       options: Mapping[str, Any]) -> list[str]:
        return select_qr_tables(model, names, rank)

    def build(self, model: nn.Module, name: str, stats: Any, rank: int, method: str,
              options: Mapping[str, Any]) -> tuple[PlanEntry, QREmbedding]:
        """``qr_init="random"``: the quotient rows drawn at the table's own standard deviation (at fit
        start the model's initialisation, as AFM's random start), see :class:`QREmbedding`;
        ``"table"``: :meth:`QREmbedding.from_table`."""
        operation, init = options.get("qr_operation", "mult"), options.get("qr_init", "random")
        if operation not in QR_OPERATIONS:
            raise ValueError(f"qr_operation must be one of {QR_OPERATIONS}, got {operation!r}")
        if init not in QR_INITS:
            raise ValueError(f"qr_init must be one of {QR_INITS}, got {init!r}")
        table = checked_table(model, name, "QR")
        s, t = table.weight.shape
        try:
            if init == "table":
                new = QREmbedding.from_table(table.weight, rank, operation)
            else:
                sigma = float(table.weight.detach().std()) if table.weight.numel() > 1 else 1.0
                new = QREmbedding(s, t, rank, operation, init_std=sigma if math.isfinite(sigma) and sigma > 0 else 1.0,
                                  device=table.weight.device, dtype=table.weight.dtype)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{name!r}: {err}") from err
        flags = {"operation": operation, "init": init}
        return PlanEntry(name=name, kind=self.name, method=self.method, rank=int(rank), shape=[s, t], flags=flags), new

    def replay(self, model: nn.Module, entry: PlanEntry) -> QREmbedding:
        table = self.replaced_module(model, entry)
        return QREmbedding(*entry.shape, entry.rank, entry.flags.get("operation", "mult"),
                           device=table.weight.device, dtype=table.weight.dtype)

    def is_applied(self, model: nn.Module, entry: PlanEntry) -> bool:
        module = get_submodule(model, entry.name)
        return (isinstance(module, QREmbedding) and module.collisions == entry.rank
                and module.operation == entry.flags.get("operation", "mult"))

    def structure(self, entry: PlanEntry) -> Structure:
        """``ceil(s / m) + m`` rows of width ``t``; a lookup multiplies ``t`` pairs with ``"mult"``, none with ``"add"``."""
        (s, t), m = entry.shape, entry.rank
        mult = entry.flags.get("operation", "mult") == "mult"
        return Structure(parameters=qr_rows(s, m) * t, multiply_adds=t if mult else 0, biases={})


def compress_embeddings_qr(model: nn.Module, names: Sequence[str], collisions: int, operation: str = "mult",
                           init: str = "random") -> list[PlanEntry]:
    """Replace the tables ``names`` by QR tables, all or nothing; the ``"qr_embedding"`` entries in ``names`` order.

    Example:
        >>> model = nn.Sequential(nn.Embedding(1000, 16))
        >>> entry, = compress_embeddings_qr(model, ["0"], collisions=8)
        >>> type(model[0]).__name__, entry.kind, entry.method, entry.rank
        ('QREmbedding', 'qr_embedding', 'qr', 8)
    """
    return compress_targets(model, names, None, collisions, "qr", qr_operation=operation, qr_init=init)
