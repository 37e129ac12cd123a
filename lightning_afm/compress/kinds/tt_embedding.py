"""Kind ``"tt_embedding"``: an ``nn.Embedding`` becomes a :class:`TTEmbedding` (TT-Rec cores), method ``"ttd"``.

The cores come from TT-SVD of the trained table (option ``init="svd"``) or TT-Rec's random
Gaussian initialisation (``init="random"``, scale ``init_std``, default ``1 / sqrt(3 s)``). Other
options: ``row_factors``, ``dim_factors``, ``num_cores``, ``deduplicate`` (see :class:`TTEmbedding`).
The entry's rank is the TT-rank ``R``; its flags hold the factors and TT-ranks to rebuild it.
As TT-Rec, a stage compresses only the large tables and their LR tables (:func:`select_tt_tables`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from lightning_afm.compress.contract import implements_contract
from lightning_afm.compress.kinds.embedding import plain_table
from lightning_afm.compress.kinds.table_kind import TableKind
from lightning_afm.compress.plan import PlanEntry
from lightning_afm.compress.registry import Structure, check_rank
from lightning_afm.compress.surgery import get_submodule
from lightning_afm.compress.tt_modules import TTEmbedding
from lightning_afm.compress.ttd import DEFAULT_NUM_CORES, DEFAULT_TT_MIN_ROWS, TT_INITS, tt_rec_init_std, tt_ranks_for

__all__ = ["TTEmbeddingKind", "select_tt_tables"]


def _table(model: nn.Module, name: str) -> nn.Embedding:
    """The plain table ``name``, checked to be one a TT table can replace."""
    if not name:
        raise ValueError("give the dotted name of an nn.Embedding inside the model, not the model itself")
    module = get_submodule(model, name)
    if not isinstance(module, nn.Embedding):
        raise ValueError(
            f"{name!r} is a {type(module).__name__}, not an nn.Embedding; only plain tables become TT tables"
        )
    if module.max_norm is not None:
        raise ValueError(f"{name!r} renormalises rows (max_norm={module.max_norm}), which a TT table cannot do")
    if module.sparse:
        raise ValueError(
            f"{name!r} has sparse gradients (sparse=True); TT cores get dense gradients, so a sparse "
            "optimiser would break: rebuild the table with sparse=False first"
        )
    if module.scale_grad_by_freq:
        raise ValueError(
            f"{name!r} scales gradients by frequency (scale_grad_by_freq=True), which a TT table does not do"
        )
    return module


class TTEmbeddingKind(TableKind):
    name = "tt_embedding"
    method = "ttd"
    produces = TTEmbedding

    def select_targets(self, model: nn.Module, names: list[str], rank: int,
                       options: Mapping[str, Any]) -> list[str]:
        """TT-Rec's tables: options ``ttd_min_rows`` and ``ttd_lr``, see :func:`select_tt_tables`."""
        return select_tt_tables(model, names, options.get("ttd_min_rows", DEFAULT_TT_MIN_ROWS),
                                options.get("ttd_lr", True))

    def build(self, model: nn.Module, name: str, stats: Any, rank: int, method: str,
              options: Mapping[str, Any]) -> tuple[PlanEntry, TTEmbedding]:
        check_rank(rank, label="tt_rank")
        init = options.get("init", "svd")
        if init not in TT_INITS:
            raise ValueError(f"init must be one of {TT_INITS}, got {init!r}")
        table = _table(model, name)
        s, t = table.weight.shape
        shape = {"row_factors": options.get("row_factors"), "dim_factors": options.get("dim_factors"),
                 "num_cores": options.get("num_cores", DEFAULT_NUM_CORES), "padding_idx": table.padding_idx,
                 "deduplicate": options.get("deduplicate", True)}
        try:
            if init == "svd":
                new = TTEmbedding.from_table(table.weight, rank, **shape)
            else:
                init_std = options.get("init_std")
                std = tt_rec_init_std(s) if init_std is None else float(init_std)
                new = TTEmbedding(s, t, rank, **shape, init_std=std, device=table.weight.device,
                                  dtype=table.weight.dtype)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{name!r}: {err}") from err
        flags: dict[str, Any] = {"row_factors": list(new.row_factors), "dim_factors": list(new.dim_factors),
                                 "tt_ranks": list(new.tt_ranks), "padding_idx": new.padding_idx,
                                 "deduplicate": new.deduplicate, "init": init}
        if init == "svd":
            flags["relative_error"] = float(new.tt_svd_relative_error)
        return PlanEntry(name=name, kind=self.name, method=self.method, rank=int(rank), shape=[s, t], flags=flags), new

    def replay(self, model: nn.Module, entry: PlanEntry) -> TTEmbedding:
        table = self.replaced_module(model, entry)
        flags = entry.flags
        if "row_factors" not in flags or "dim_factors" not in flags:
            raise ValueError(f"TT plan entry {entry.name!r} lacks row_factors/dim_factors in its flags: {flags}")
        s, t = entry.shape
        new = TTEmbedding(s, t, entry.rank, row_factors=flags["row_factors"], dim_factors=flags["dim_factors"],
                          padding_idx=flags.get("padding_idx"), deduplicate=bool(flags.get("deduplicate", True)),
                          device=table.weight.device, dtype=table.weight.dtype)
        if "tt_ranks" in flags and list(flags["tt_ranks"]) != new.tt_ranks:
            raise ValueError(
                f"TT plan entry {entry.name!r} records ranks {flags['tt_ranks']}, but rank {entry.rank} with "
                f"factors {new.row_factors} x {new.dim_factors} gives {new.tt_ranks}"
            )
        return new

    def is_applied(self, model: nn.Module, entry: PlanEntry) -> bool:
        module = get_submodule(model, entry.name)
        return (
            isinstance(module, TTEmbedding)
            and module.tt_rank == entry.rank
            and module.row_factors == list(entry.flags.get("row_factors", module.row_factors))
            and module.dim_factors == list(entry.flags.get("dim_factors", module.dim_factors))
        )

    def structure(self, entry: PlanEntry) -> Structure:
        """Core ``k`` holds ``n_k r_{k-1} d_k r_k`` entries; a lookup multiplies the gathered slices left to
        right, step ``k`` a ``[d_1..d_{k-1}, r_{k-1}] x [r_{k-1}, d_k r_k]`` product."""
        rows, dims = entry.flags["row_factors"], entry.flags["dim_factors"]
        ranks = entry.flags.get("tt_ranks") or tt_ranks_for(rows, dims, entry.rank)
        parameters = sum(n * r0 * d * r1 for n, d, r0, r1 in zip(rows, dims, ranks[:-1], ranks[1:]))
        multiply_adds = sum(math.prod(dims[:k]) * ranks[k] * dims[k] * ranks[k + 1] for k in range(1, len(dims)))
        return Structure(parameters=parameters, multiply_adds=multiply_adds, biases={})

    def plain_module(self, name: str, module: TTEmbedding, state_dict: Mapping[str, Any]) -> nn.Embedding:
        return plain_table(module, module.padding_idx)  # a TT table keeps the padding row QR and PQ refuse


def select_tt_tables(
    model: nn.Module,
    names: Sequence[str],
    min_rows: int = DEFAULT_TT_MIN_ROWS,
    lr_tables: bool = True,
) -> list[str]:
    """The tables a TT-Rec stage compresses: ``names`` with ``>= min_rows`` rows, and their LR tables.

    TT-Rec replaces only the large tables: a small one costs less dense than as cores (a
    3-row table of width 16 is 48 entries; its rank-16 cores are over 800), and its lookup
    is cheap. ``lr_tables``: for each selected field table, also its width-1 LR (first-order)
    table, where the model's layout names one (:class:`~lightning_afm.compress.contract.ModelLayout`
    ``lr_tables``): with 33.8M Criteo rows the dense LR tables alone are 33.2M parameters against
    the 3.76M of the paper's whole TTD model (Table 4, line 715), so the paper's TTD compresses
    them too. A model without the contract (or a field without an LR table) has no LR table to add.

    Returns the field tables in ``names`` order, then their LR tables in the same order.

    Raises:
        ValueError: ``min_rows`` is not a positive int, or no table in ``names`` has that many rows.
    """
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        raise ValueError(f"min_rows must be a positive int (tables with fewer rows stay dense), got {min_rows!r}")
    sizes = {name: _table(model, name).num_embeddings for name in names}
    large = [name for name in names if sizes[name] >= min_rows]
    if not large:
        biggest = max(sizes.values(), default=0)
        raise ValueError(
            f"no table has {min_rows} rows or more (the largest of {len(sizes)} has {biggest}); TT-Rec leaves "
            f"tables below min_rows dense, so nothing would be compressed: lower min_rows (ttd_min_rows)"
        )
    lr: list[str] = []
    if lr_tables and implements_contract(model):
        known = model.compression_layout().lr_tables
        for name in large:
            candidate = known.get(name)
            if candidate is None or candidate in large:
                continue
            try:
                module = model.get_submodule(candidate)
            except AttributeError:
                continue
            if isinstance(module, nn.Embedding):
                _table(model, candidate)  # the same checks as any table
                lr.append(candidate)
    return large + lr
