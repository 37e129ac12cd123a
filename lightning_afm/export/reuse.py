"""Find an fp32 ONNX export of the same weights that already passed its check, so that serving opens
it instead of exporting the model again at load (0.2 to 2.8 s for the zoo's models at the Criteo shape
with 100,000-row tables, AMD EPYC, one thread: ``benchmarks/bench_predictor_load.py``).

An export qualifies when its ``manifest.json`` (:mod:`.manifest`) says: format ``onnx``, not int8,
the check passed within :data:`~.verify.DEFAULT_TOLERANCE`, ``model.weights_sha256`` equal to the
checksum of the model being served (:func:`~.manifest.weights_sha256`), and the artifact's bytes
still match its ``sha256``. Anything else (an older manifest without the weights' checksum, other
weights, an edited file) is passed over, and the caller exports as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

from lightning_afm.export.manifest import MANIFEST_NAME, MANIFEST_VERSION, sha256
from lightning_afm.export.verify import DEFAULT_TOLERANCE


def _candidate_folders(folders: Iterable[Path]) -> list[Path]:
    """Each folder, then its immediate subfolders (``lightning-afm-export <run> out=<run>/onnx``), once each."""
    found: list[Path] = []
    seen: set[Path] = set()
    for folder in folders:
        if not folder.is_dir():
            continue
        for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
            if candidate.resolve() not in seen:
                seen.add(candidate.resolve())
                found.append(candidate)
    return found


def _qualifies(manifest: dict, folder: Path, weights: str) -> Path | None:
    """The artifact of ``manifest`` (read from ``folder``) when it is a verified fp32 ONNX export of ``weights``."""
    check = manifest.get("verification") or {}
    if (manifest.get("manifest_version") != MANIFEST_VERSION or manifest.get("format") != "onnx"
            or "int8" in (manifest.get("exporter") or {}) or check.get("passed") is not True
            or not float(check.get("max_abs_diff", float("inf"))) <= DEFAULT_TOLERANCE
            or (manifest.get("model") or {}).get("weights_sha256") != weights):
        return None
    artifact = folder / str(manifest.get("file", ""))
    if not artifact.is_file() or sha256(artifact) != manifest.get("sha256"):
        return None
    return artifact


def find_verified_onnx(folders: Iterable[str | Path], weights: Callable[[], str]) -> tuple[Path, dict] | None:
    """The first verified ONNX export of the same weights in ``folders`` or their immediate
    subfolders, as ``(artifact path, manifest)``; None when there is none.

    ``weights`` returns the served model's :func:`~.manifest.weights_sha256`; it is called only
    when some folder holds an ONNX manifest (hashing a large model's tables is not free).
    """
    checksum: str | None = None
    for folder in _candidate_folders(Path(f).expanduser() for f in folders):
        path = folder / MANIFEST_NAME
        if not path.is_file():
            continue
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):  # unreadable or not JSON: not an export to reuse
            continue
        if not isinstance(manifest, dict) or manifest.get("format") != "onnx":
            continue
        checksum = checksum or weights()
        artifact = _qualifies(manifest, folder, checksum)
        if artifact is not None:
            return artifact, manifest
    return None
