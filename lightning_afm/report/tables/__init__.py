"""One module per table of the paper; :data:`TABLES` maps a table's name to its ``build``."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from lightning_afm.report.common import Context, TableReport
from lightning_afm.report.runs import Run
from lightning_afm.report.tables import (
    pareto, table2, table4, table6, table7, table8, table11, table13, table14, table15, table16, table17,
)

__all__ = ["TABLES", "TableBuilder", "get_table", "table_name"]

TableBuilder = Callable[[list[Run], Context], TableReport]

_MODULES: dict[str, ModuleType] = {
    "table2": table2, "table4": table4, "table6": table6, "table7": table7, "table8": table8,
    "table11": table11, "table13": table13, "table14": table14, "table15": table15, "table16": table16,
    "table17": table17, "pareto": pareto,
}
#: ``{"table4": build, ...}``: each ``build(runs, context) -> TableReport``.
TABLES: dict[str, TableBuilder] = {name: module.build for name, module in _MODULES.items()}
#: ``{"table4": ("compression",), ...}``: the override keys each table tells apart in its rows.
SHOWN_KEYS: dict[str, tuple[str, ...]] = {name: tuple(module.SHOWN) for name, module in _MODULES.items()}


def table_name(name: str) -> str:
    """``"table4"`` for ``"4"`` or ``"table4"``; a named table (``"pareto"``) as it is."""
    return name if name in TABLES or name.startswith("table") else f"table{name}"


def get_table(name: str) -> TableBuilder:
    """The builder of ``name`` (``"table4"``, ``"4"`` or ``"pareto"``); ValueError listing the tables otherwise."""
    key = table_name(name)
    if key not in TABLES:
        raise ValueError(f"unknown table {name!r}; the tables are {', '.join(TABLES)}")
    return TABLES[key]
