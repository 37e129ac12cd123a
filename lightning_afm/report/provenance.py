"""Where a table's numbers came from: the data, the machine, the command.

A recipe runs its sweeps, then the report with ``--command`` and ``--wall-s``; the report
stores them with a description of the machine in ``recipe.json`` next to the runs, so a later
``lightning-afm-report`` on the same directory labels the table with the machine the runs
really used, not the one the report happens to run on.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lightning_afm.bench.report import cpu_name
from lightning_afm.report.runs import Run, config_value

__all__ = ["RECORD", "machine", "describe_machine", "describe_data", "hydra_commands", "write_record",
           "read_record", "now"]

#: The provenance file a recipe leaves in its output directory.
RECORD = "recipe.json"


def now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def machine() -> dict[str, Any]:
    """This machine: CPU model, logical CPUs, torch version and threads, platform."""
    import torch

    return {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.is_available(),
            "platform": platform.platform()}


def describe_machine(info: dict[str, Any]) -> str:
    gpu = ", CUDA available" if info.get("gpu") else ", CPU only"
    return (f"{info.get('cpu', '?')} ({info.get('logical_cpus', '?')} logical CPUs{gpu}), "
            f"torch {info.get('torch', '?')} with {info.get('torch_threads', '?')} threads, "
            f"{info.get('platform', '?')}")


def _describe_one(run: Run) -> str:
    data = run.config.get("data") or {}
    target = str(data.get("_target_", "")).rsplit(".", 1)[-1]
    name = run.data
    parts = []
    if data.get("num_rows") is not None:
        rows = int(data["num_rows"])
        val, test = float(data.get("val_fraction", 0) or 0), float(data.get("test_fraction", 0) or 0)
        n_test, n_val = round(rows * test), round(rows * val)
        n_train = rows - n_test - n_val
        parts.append(f"{rows:,} generated rows (train {n_train:,} / val {n_val:,} / test {n_test:,})")
        if data.get("vocab_sizes"):
            parts.append(f"{len(data['vocab_sizes'])} fields of up to {max(data['vocab_sizes']):,} values")
    if data.get("path"):
        parts.append(f"`{data['path']}`")
        split = [f"{k.split('_')[0]} {float(data[k]):.0%}" for k in ("val_fraction", "test_fraction") if data.get(k)]
        if split:
            parts.append("random split: " + ", ".join(split))
    if data.get("seed") is not None:
        parts.append(f"data seed {data['seed']}")
    inner = "; ".join(parts) if parts else "configuration not recorded"
    return f"{name} ({target}: {inner})" if target else f"{name} ({inner})"


def describe_data(runs: Sequence[Run]) -> list[str]:
    """One line per distinct dataset the runs used (name, source or size, split)."""
    return list(dict.fromkeys(_describe_one(r) for r in runs))


def hydra_commands(roots: Sequence[str | Path]) -> list[str]:
    """The ``lightning-afm -m ...`` command line of each sweep under ``roots`` (from Hydra's ``multirun.yaml``)."""
    out = []
    for root in map(Path, roots):
        for path in sorted(root.rglob("multirun.yaml")):
            task = config_value(OmegaConf.to_container(OmegaConf.load(path), resolve=False), "hydra.overrides.task")
            if isinstance(task, list):
                out.append("lightning-afm -m " + " ".join(_quote(str(t)) for t in task))
    return out


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " []{}$*?") else arg


def write_record(directory: str | Path, command: str, wall_s: float | None) -> dict[str, Any]:
    """Store the recipe's command, wall time and this machine in ``directory/recipe.json``."""
    record = {"command": command, "wall_s": wall_s, "date": now(), "machine": machine()}
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


def read_record(directories: Sequence[str | Path]) -> dict[str, Any] | None:
    """The first ``recipe.json`` found directly in one of ``directories``, or None."""
    for d in map(Path, directories):
        path = d / RECORD
        if path.is_file():
            return json.loads(path.read_text())
    return None
