"""``lightning-afm-report`` (or ``python -m lightning_afm.report``): one of the paper's tables from a recipe's runs.

::

    lightning-afm-report table4 multirun/recipes/table4/small
    lightning-afm-report table2 multirun/recipes/table2/full --out results/ --bench bench_out/bench.json
    lightning-afm-report table7 sweep_a sweep_b --no-plot
    lightning-afm-report pareto multirun/recipes/pareto/small

Reads every ``summary.json`` under the given directories (with the ``.hydra`` config and
overrides next to each), prints the table as Markdown and writes ``<table>.md`` and, where a
picture says more (rank sweeps, spectra, seeds), ``<table>.png`` into ``--out`` (default: the
first directory). The header says which data, machine and command the numbers came from; the
recipes pass ``--command`` and ``--wall-s`` once, which are kept in ``recipe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_afm.report import provenance
from lightning_afm.report.common import Context, TableReport, check_nothing_hidden_is_averaged
from lightning_afm.report.runs import Run, find_runs, incomplete_runs
from lightning_afm.report.tables import SHOWN_KEYS, TABLES, get_table, table_name

__all__ = ["main", "render", "write_report", "load_bench"]

BENCH_KEYS = ("model", "dataset", "variant")
#: The tables with throughput columns from lightning-afm-bench (report/bench_columns.py).
BENCH_TABLES = ("table2", "table4")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def load_bench(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``bench.json`` (``lightning-afm-bench``), checked for the keys the merge needs."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"bench file {path} does not exist; run lightning-afm-bench out={path.parent}") \
            from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path} must hold a list of rows (JSON objects), as lightning-afm-bench writes")
    for i, row in enumerate(rows):
        missing = [k for k in BENCH_KEYS if k not in row]
        if missing:
            raise ValueError(f"{path}: row {i} lacks {missing}; each row needs {list(BENCH_KEYS)}")
    return rows


def _find_bench(explicit: str | None, out: Path, roots: Sequence[Path]) -> Path | None:
    if explicit:
        return Path(explicit)
    if (out / "bench.json").is_file():
        return out / "bench.json"
    for root in roots:
        hits = sorted(root.rglob("bench.json"))
        if hits:
            return hits[0]
    return None


def render(table: str, report: TableReport, runs: Sequence[Run], roots: Sequence[Path],
           record: dict[str, Any] | None, figure_file: str | None, out: Path) -> str:
    """The Markdown of one table: a header saying where the numbers come from, the tables, the notes."""
    lines = [f"# {report.title}", "",
             "Reproduced with lightning-afm: every figure below was measured on the runs listed here; "
             "none is copied from the paper.", ""]
    for i, data in enumerate(provenance.describe_data(runs)):
        lines.append(f"- Data: {data}" if i == 0 else f"- Data ({i + 1}): {data}")
    if record and record.get("machine"):
        lines.append(f"- Machine: {provenance.describe_machine(record['machine'])} (recorded by the recipe, "
                     f"{record.get('date', '?')})")
    else:
        lines.append(f"- Machine: not recorded (no {provenance.RECORD}); this report ran on "
                     f"{provenance.describe_machine(provenance.machine())}")
    if record and record.get("command"):
        wall = _duration(record.get("wall_s"))
        lines.append(f"- Command: `{record['command']}`" + (f" ({wall} in all)" if wall else ""))
    for cmd in provenance.hydra_commands(roots):
        lines.append(f"- Sweep: `{cmd}`")
    lines.append(f"- Runs: {len(runs)} under " + ", ".join(f"`{r}`" for r in roots))
    missing = incomplete_runs(roots)
    if missing:
        lines.append("- **Incomplete runs (no summary.json, left out)**: " + ", ".join(f"`{m}`" for m in missing))
    for section in report.sections:
        lines += ["", section]
    if figure_file:
        lines += ["", f"![{table}]({figure_file})"]
    notes = list(report.notes)
    notes.append(f"Regenerate this file: `lightning-afm-report {table} {' '.join(map(str, roots))} --out {out}`.")
    lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_report(table: str, roots: Sequence[str | Path], out: str | Path | None = None,
                 command: str | None = None, wall_s: float | None = None, bench: str | None = None,
                 plot: bool = True) -> tuple[str, Path, Path | None]:
    """Build ``table`` from the runs under ``roots``; write ``<table>.md`` (and ``.png``) into ``out``.

    Returns the Markdown, its path, and the PNG's path (None when the table has no figure or
    ``plot`` is False). ``command``/``wall_s``: record the recipe's command in ``recipe.json``.
    """
    builder = get_table(table)
    name = table_name(table)
    roots = [Path(r) for r in roots]
    if not roots:
        raise ValueError("give at least one directory with runs")
    runs = find_runs(roots)
    check_nothing_hidden_is_averaged(runs, SHOWN_KEYS[name], name)
    out = Path(out) if out is not None else roots[0]
    out.mkdir(parents=True, exist_ok=True)

    context = Context()
    if name in BENCH_TABLES:
        bench_path = _find_bench(bench, out, roots)
        if bench_path is not None:
            context.bench, context.bench_source = load_bench(bench_path), f"`{bench_path}`"
    elif bench:
        raise ValueError(f"--bench only applies to {' and '.join(BENCH_TABLES)} (the throughput columns), not {name}")

    record = provenance.write_record(out, command, wall_s) if command else provenance.read_record([out, *roots])
    report = builder(runs, context)
    png = None
    if plot and report.figure is not None:
        png = out / f"{name}.png"
        report.figure(png)
    markdown = render(name, report, runs, roots, record, png.name if png else None, out)
    md_path = out / f"{name}.md"
    md_path.write_text(markdown)
    return markdown, md_path, png


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="lightning-afm-report",
        description="Gather the summary.json files of a recipe's runs into one of the paper's tables "
                    "(Markdown, and a PNG where a picture says more).")
    parser.add_argument("table", help=f"which table: {', '.join(TABLES)} (or just the number)")
    parser.add_argument("dirs", nargs="+", help="directories holding the runs (searched recursively)")
    parser.add_argument("--out", help="where to write <table>.md / .png (default: the first directory)")
    parser.add_argument("--command", help="the command that produced the runs (recorded in recipe.json)")
    parser.add_argument("--wall-s", type=float, help="its wall time in seconds (recorded in recipe.json)")
    parser.add_argument("--bench", help="bench.json of lightning-afm-bench (table2, table4; default: <out>/bench.json "
                                        "or one found under the directories)")
    parser.add_argument("--no-plot", action="store_true", help="write the Markdown only")
    parser.add_argument("--quiet", action="store_true", help="do not print the Markdown")
    args = parser.parse_args(argv)
    try:
        markdown, md_path, png = write_report(args.table, args.dirs, args.out, args.command, args.wall_s,
                                              args.bench, plot=not args.no_plot)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"lightning-afm-report: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if not args.quiet:
        print(markdown)
    print(f"wrote {md_path}" + (f" and {png}" if png else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
