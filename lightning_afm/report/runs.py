"""Find the runs of a Hydra multirun and read what each left behind.

A run is a directory holding ``summary.json`` (written by ``lightning-afm``), usually with
Hydra's ``.hydra/config.yaml`` (the composed config) and ``.hydra/overrides.yaml`` (the
command-line overrides of that job) next to it. A sweep directory holds one run per job
(``<sweep>/<job number>/``) and Hydra's ``multirun.yaml``; the search is recursive, so a
directory of sweeps (one per dataset, say) reads as one set of runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

__all__ = ["Run", "find_runs", "load_run", "incomplete_runs", "config_value"]

SUMMARY = "summary.json"


@dataclass
class Run:
    """One finished run.

    Attributes:
        path: the run directory.
        summary: ``summary.json`` as a dict (see :func:`lightning_afm.cli.run`).
        config: the composed config (``.hydra/config.yaml``, interpolations resolved where
            possible); ``{}`` when the run has no ``.hydra`` directory.
        overrides: the job's command-line overrides (``.hydra/overrides.yaml``), e.g.
            ``["model=dcn", "compression=afm"]``.
    """

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        return str(self.summary.get("model", "?"))

    @property
    def data(self) -> str:
        return str(self.summary.get("data", "?"))

    @property
    def stages(self) -> list[dict[str, Any]]:
        return list(self.summary.get("stages") or [])

    def value(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (``"compression.mlp.relu"``), or ``default``."""
        return config_value(self.config, dotted, default)


def config_value(config: Any, dotted: str, default: Any = None) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``; ``default`` where a part is missing or not a mapping."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _natural_key(path: Path) -> list[Any]:
    """Sort ``2/`` before ``10/`` (Hydra numbers its jobs without padding)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    conf = OmegaConf.load(path)
    try:
        data = OmegaConf.to_container(conf, resolve=True)
    except Exception:  # an interpolation that cannot resolve here (an unset env var): keep it as text
        data = OmegaConf.to_container(conf, resolve=False)
    return data if isinstance(data, dict) else {}


def load_run(directory: str | Path) -> Run:
    """The :class:`Run` in ``directory`` (which must hold ``summary.json``)."""
    directory = Path(directory)
    summary_path = directory / SUMMARY
    try:
        summary = json.loads(summary_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{summary_path} does not exist: is {directory} a finished lightning-afm run?") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{summary_path} is not valid JSON ({err}); the run may have been interrupted") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{summary_path} holds a {type(summary).__name__}, not a run summary (a JSON object)")
    hydra_dir = directory / ".hydra"
    overrides_path = hydra_dir / "overrides.yaml"
    overrides = OmegaConf.to_container(OmegaConf.load(overrides_path)) if overrides_path.is_file() else []
    return Run(
        path=directory,
        summary=summary,
        config=_read_config(hydra_dir / "config.yaml"),
        overrides=[str(o) for o in (overrides or [])],
    )


def find_runs(roots: str | Path | Sequence[str | Path]) -> list[Run]:
    """Every run under ``roots`` (recursively), in job order.

    Raises:
        FileNotFoundError: a root does not exist, or no ``summary.json`` lies under any root.
    """
    if isinstance(roots, (str, Path)):
        roots = [roots]
    found: list[Path] = []
    for root in map(Path, roots):
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist; give the sweep directory of a recipe (e.g. "
                                    "multirun/recipes/table4/small)")
        found += [p.parent for p in root.rglob(SUMMARY)]
    if not found:
        raise FileNotFoundError(
            f"no {SUMMARY} under {', '.join(map(str, roots))}: the runs have not finished (or the directory "
            "is not a lightning-afm multirun); run the recipe first")
    return [load_run(d) for d in sorted(dict.fromkeys(found), key=_natural_key)]


def incomplete_runs(roots: Iterable[str | Path]) -> list[Path]:
    """Hydra job directories (with a ``.hydra``) under ``roots`` that have no ``summary.json`` (crashed or running)."""
    out = []
    for root in map(Path, roots):
        for hydra_dir in root.rglob(".hydra"):
            if hydra_dir.is_dir() and not (hydra_dir.parent / SUMMARY).is_file():
                out.append(hydra_dir.parent)
    return sorted(out, key=_natural_key)
