"""The throughput columns tables 2 and 4 add from ``lightning-afm-bench``'s ``bench.json``.

``bench.json`` holds rows ``{model, dataset, variant, params, samples_per_s, gain_pct,
vocab_cap, skipped?}``, timed at the paper's shape of ``dataset`` (not at the shape of the
trained runs). A table section of one data pairs with the bench dataset of the same name
(Criteo runs with the bench's Criteo shape), or with the one bench dataset when the runs used
other data (the built-in synthetic data): the note then says which shape was timed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning_afm.report.common import Context
from lightning_afm.report.format import MISSING, fmt_params

__all__ = ["BenchColumns", "bench_columns", "bench_dataset"]


def bench_dataset(data: str, bench: list[dict[str, Any]]) -> str | None:
    """The bench dataset to show next to runs on ``data``: the same one, else the only one, else None."""
    datasets = list(dict.fromkeys(str(r.get("dataset")) for r in bench))
    if data in datasets:
        return data
    return datasets[0] if len(datasets) == 1 else None


@dataclass(frozen=True)
class BenchColumns:
    """The bench rows of one dataset, as the cells of three columns: params, samples/s, gain."""

    rows: list[dict[str, Any]]
    dataset: str

    @property
    def headers(self) -> list[str]:
        return [f"Bench params ({self.dataset})", "Samples/s (bench)", "Gain (bench)"]

    def cells(self, model: str, variant: str | None) -> list[str]:
        """The three cells of ``model``'s ``variant`` (all ``–`` when the bench has no such row or skipped it).

        ``variant`` None: the table row has no bench counterpart (its structure was not timed).
        The gain is against the bench's baseline of the same model and shape, so the baseline has none.
        """
        row = None if variant is None else next(
            (r for r in self.rows if r.get("dataset") == self.dataset and r.get("model") == model
             and r.get("variant") == variant), None)
        if row is None or row.get("skipped"):
            return [MISSING, MISSING, MISSING]
        sps, gain = row.get("samples_per_s"), row.get("gain_pct")
        return [fmt_params(row.get("params")), MISSING if sps is None else f"{float(sps):,.0f}",
                MISSING if variant == "baseline" or gain is None else f"{float(gain):+.1f} %"]


def bench_columns(data: str, context: Context, notes: list[str]) -> BenchColumns | None:
    """The bench columns for the section of runs on ``data`` (None without a bench to pair with).

    Appends to ``notes`` which shape the figures were timed at (and whether it is the runs'
    own), or why the section goes without them.
    """
    bench = context.bench
    if not bench:
        return None
    dataset = bench_dataset(data, bench)
    if dataset is None:
        notes.append(f"bench.json has no single dataset to pair with {data}: throughput left out.")
        return None
    shape = "the shape of these runs" if dataset == data else "**not the shape of the trained models**"
    caps = sorted({r.get("vocab_cap") for r in bench if r.get("dataset") == dataset} - {None})
    if caps:
        shape += f"; every table capped at {', '.join(f'{c:,}' for c in caps)} rows"
    notes.append(f"Bench columns on {data}: CPU inference throughput measured by `lightning-afm-bench` at the "
                 f"paper's {dataset} shape ({shape}), from {context.bench_source} (its bench.md gives the timing "
                 "method, machine and noise).")
    return BenchColumns(bench, dataset)
