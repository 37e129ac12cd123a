"""Numbers and Markdown tables for the reports.

Cells that aggregate several runs (seeds) print ``mean ± std (n=...)`` with the sample
standard deviation (``ddof=1``); a single run prints its value.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["MISSING", "markdown_table", "fmt_metric", "fmt_params", "fmt_ratio", "fmt_mean", "fmt_mean_std", "mean_std",
           "fmt_signed", "finite", "METHOD_TITLES", "model_title"]

#: What an empty cell shows (a figure the runs do not have).
MISSING = "–"

METHOD_TITLES = {"afm": "AFM", "svd": "SVD", "ttd": "TTD", "random": "From scratch"}

_MODEL_TITLES = {"dcn": "DCN", "deepfm": "DeepFM", "nfm": "NFM", "autoint": "AutoInt", "fibinet": "FiBiNet",
                 "dcnv2": "DCNv2", "gdcn": "GDCN"}


def model_title(name: str) -> str:
    """``"deepfm"`` -> ``"DeepFM"`` as the paper writes it; unknown names as given."""
    return _MODEL_TITLES.get(str(name).lower(), str(name))


def finite(values: Iterable[Any]) -> list[float]:
    """The values that are real numbers (drops None, NaN, text)."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out.append(float(v))
    return out


def mean_std(values: Iterable[Any]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (None for fewer than 2 values) and count of the finite values."""
    vals = finite(values)
    if not vals:
        return None, None, 0
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return statistics.fmean(vals), std, len(vals)


def fmt_metric(value: Any, digits: int = 4) -> str:
    """An AUC or logloss with ``digits`` decimals; :data:`MISSING` when absent."""
    vals = finite([value])
    return f"{vals[0]:.{digits}f}" if vals else MISSING


def fmt_mean(values: Sequence[Any], digits: int = 4) -> str:
    """One value as :func:`fmt_metric`; several as ``mean ± std (n=k)``."""
    mean, std, n = mean_std(values)
    if n == 0:
        return MISSING
    if n == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def fmt_mean_std(values: Iterable[Any], digits: int = 4) -> str:
    """``mean ± std`` of the finite values (the mean alone for one value); :data:`MISSING` for none."""
    mean, std, n = mean_std(values)
    if n == 0:
        return MISSING
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def fmt_params(value: Any) -> str:
    """Parameters in millions with two decimals as the paper's Table 2 (``2.22M``); under 100,000 in full."""
    vals = finite([value])
    if not vals:
        return MISSING
    p = vals[0]
    return f"{p / 1e6:.2f}M" if p >= 100_000 else f"{int(p):,}"


def fmt_ratio(numerator: Any, denominator: Any) -> str:
    """``numerator / denominator`` as ``5.09x``; :data:`MISSING` when either is absent or zero."""
    a, b = finite([numerator]), finite([denominator])
    if not a or not b or b[0] == 0:
        return MISSING
    return f"{a[0] / b[0]:.2f}x"


def fmt_signed(value: Any, digits: int = 4) -> str:
    """A difference with its sign (``+0.0012``)."""
    vals = finite([value])
    return f"{vals[0]:+.{digits}f}" if vals else MISSING


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` per column: ``"l"`` or ``"r"`` (default: first left, rest right)."""
    if align is None:
        align = ["l"] + ["r"] * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError(f"{len(align)} alignments for {len(headers)} columns")
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} columns: {row!r}")
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
