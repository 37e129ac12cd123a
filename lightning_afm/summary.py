"""The run summary: one JSON and one Markdown file per run, for people and for the recipes."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)


def _fmt(value: Any, key: str = "") -> str:
    """One cell, formatted by what the key measures, so that like figures look alike.

    AUC and logloss: 4 decimals (the paper's); seconds: 1 decimal; rates, counts and
    parameters: whole numbers with thousands separators; other floats: 4 significant digits;
    a missing or undefined figure (None, NaN): an em dash.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if key.endswith(("auc", "logloss", "loss")):
            return f"{value:.4f}"
        if key.endswith("_per_s") or key.endswith("params"):
            return f"{value:,.0f}"
        if key.endswith("_s"):
            return f"{value:,.1f}"
        return f"{value:,.4g}"
    return str(value)


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """A two-column table of the scalar entries, then one table of the compression stages if any."""
    lines = [f"# {summary.get('model', 'run')} on {summary.get('data', '?')}", "", "| key | value |", "|---|---|"]
    for key, value in summary.items():
        if isinstance(value, (dict, list)):
            continue
        lines.append(f"| {key} | {_fmt(value, key)} |")
    stages = summary.get("stages") or []
    if stages:
        cols = [c for c in ("name", "method", "rank", "params", "pre_finetune_test_auc",
                            "pre_finetune_test_logloss", "test_auc", "test_logloss") if any(s.get(c) is not None for s in stages)]
        align = ["---" if c in ("name", "method") else "---:" for c in cols]
        lines += ["", "## Compression stages", "", "| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
        for s in stages:
            lines.append("| " + " | ".join(_fmt(s.get(c), c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinite floats as None (``null``): JSON has no NaN, and an
    undefined figure (the AUC of a one-class split) is missing, not a number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _create(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, or to ``stem-2``, ``stem-3``... if it exists: never overwrite."""
    for n in range(1, 1000):
        target = path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            with open(target, "x") as handle:
                handle.write(text)
        except FileExistsError:
            continue
        if n > 1:
            log.warning("%s already existed (another run wrote into this folder); wrote %s instead", path, target)
        return target
    raise FileExistsError(f"{path} and 999 numbered variants exist; clean up {path.parent}")


def write_summary(summary: Mapping[str, Any], output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` into ``output_dir``; returns both paths.

    An existing ``summary.json`` is never overwritten: the new one goes to ``summary-2.json``
    (with a warning), so two runs sharing a folder by accident both keep their results.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe = json_safe(dict(summary))
    json_path = _create(out / "summary.json", json.dumps(safe, indent=2, default=str) + "\n")
    md_path = _create(json_path.with_suffix(".md"), summary_markdown(safe))
    return json_path, md_path
