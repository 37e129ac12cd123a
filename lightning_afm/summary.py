"""The run summary: one JSON and one Markdown file per run, for people and for the recipes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """A two-column table of the scalar entries, then one table of the compression stages if any."""
    lines = [f"# {summary.get('model', 'run')} on {summary.get('data', '?')}", "", "| key | value |", "|---|---|"]
    for key, value in summary.items():
        if isinstance(value, (dict, list)):
            continue
        lines.append(f"| {key} | {_fmt(value)} |")
    stages = summary.get("stages") or []
    if stages:
        cols = [c for c in ("name", "method", "rank", "params", "pre_finetune_test_auc",
                            "pre_finetune_test_logloss", "test_auc", "test_logloss") if any(c in s for s in stages)]
        lines += ["", "## Compression stages", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for s in stages:
            lines.append("| " + " | ".join(_fmt(s.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_summary(summary: Mapping[str, Any], output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` into ``output_dir``; returns both paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "summary.json", out / "summary.md"
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    md_path.write_text(summary_markdown(summary))
    return json_path, md_path
