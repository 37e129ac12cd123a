"""``lightning-afm-report``: gather the ``summary.json`` of a recipe's runs into one of the paper's tables.

Modules: :mod:`.runs` (find and read the runs), :mod:`.common` (baseline and stage figures),
:mod:`.format` (numbers, Markdown), :mod:`.provenance` (data, machine, command),
:mod:`.plots` (PNG figures), :mod:`.tables` (one module per table) and :mod:`.cli`.
"""

from lightning_afm.report.cli import render, write_report
from lightning_afm.report.runs import Run, find_runs, load_run
from lightning_afm.report.tables import TABLES, get_table

__all__ = ["Run", "TABLES", "find_runs", "get_table", "load_run", "render", "write_report"]
