"""Run and sweep folder names: unique per run, and named after the swept keys only.

Two OmegaConf resolvers, registered by :func:`register_resolvers` (the app calls it on import):

* ``${afm_unique:PATH}`` claims ``PATH`` by creating it, or ``PATH-2``, ``PATH-3``... when an
  earlier run already holds it. Runs started in the same second (Hydra's ``${now:%H-%M-%S}``)
  then get folders of their own instead of overwriting each other's ``summary.json`` and
  checkpoints. ``os.mkdir`` is the claim, so two processes can never both win one name.
* ``${afm_swept:${hydra.job.num},${hydra.overrides.task}}`` is the job's number and its
  overrides restricted to the keys swept on the command line (``model=dcn,deepfm`` sweeps
  ``model``; ``seed=0`` does not), as ``3_data.seed=1,model=dcn``. Hydra's ``override_dirname`` holds every override, so a sweep
  with many fixed settings made names longer than the file system allows.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import OmegaConf

MAX_NAME = 120  # characters of a folder name before it is shortened with a hash

# One claim per path per process: Hydra resolves ``hydra.run.dir`` more than once in a run.
_claimed: dict[str, str] = {}


def unique_dir(path: str) -> str:
    """Create and return ``path``, or the first free ``path-N``; the same answer within a process."""
    if path in _claimed:
        return _claimed[path]
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        _claimed[path] = str(candidate)
        return str(candidate)
    raise RuntimeError(f"no free folder name next to {path} after 10,000 tries; clean up {base.parent}")


def swept_keys(argv: Sequence[str]) -> set[str]:
    """Keys swept by the command line ``argv`` (``a=1,2``, ``b=range(3)``, ``c=choice(x,y)``...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keys: set[str] = set()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except Exception:  # not an override (a flag's value): it cannot be a sweep either
            continue
        if override.is_sweep_override():
            keys.add(override.key_or_group)
    return keys


def swept_dirname(task_overrides: Iterable[str], argv: Sequence[str] | None = None) -> str:
    """``key=value`` pairs of the swept keys among a job's overrides, joined by commas.

    Empty when nothing is swept. Names longer than ``MAX_NAME`` keep their start and end with a
    short hash of the whole in between, so they stay unique and readable.
    """
    swept = swept_keys(sys.argv[1:] if argv is None else argv)
    parts = []
    for item in task_overrides:
        key = str(item).split("=", 1)[0].lstrip("+~")
        if key in swept:
            parts.append(str(item).lstrip("+~").replace("/", "-"))
    name = ",".join(sorted(parts))
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:60]}...{digest}...{name[-40:]}"
    return name


def register_resolvers() -> None:
    """Register ``afm_unique`` and ``afm_swept`` with OmegaConf (idempotent)."""
    if not OmegaConf.has_resolver("afm_unique"):
        OmegaConf.register_new_resolver("afm_unique", unique_dir)
    if not OmegaConf.has_resolver("afm_swept"):
        OmegaConf.register_new_resolver("afm_swept", job_dirname)


def job_dirname(num: int | str, task_overrides: Iterable[str]) -> str:
    """``NUM_key=value,...`` for a sweep's job (just ``NUM`` when no key is swept)."""
    name = swept_dirname(list(task_overrides))
    return f"{num}_{name}" if name else str(num)
