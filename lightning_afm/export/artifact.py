"""Export a CTR model to a serving format, verify it, and write it with its manifest, all or nothing."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lightning_afm.export import formats
from lightning_afm.export.manifest import MANIFEST_NAME, build_manifest, input_signature, write_manifest
from lightning_afm.export.verify import DEFAULT_TOLERANCE, eager_probabilities, verify


class ExportCheckFailed(RuntimeError):
    """The artifact's probabilities differ from eager PyTorch by more than the tolerance."""


def _as_arrays(categorical: Any, numeric: Any) -> tuple[np.ndarray, np.ndarray | None]:
    categorical = np.ascontiguousarray(np.asarray(categorical, dtype=np.int64))
    if numeric is not None:
        numeric = np.ascontiguousarray(np.asarray(numeric, dtype=np.float32))
        if numeric.ndim != 2 or numeric.shape[1] == 0:
            numeric = None if numeric.ndim == 2 else numeric
    return categorical, numeric


def export_model(
    model: nn.Module,
    out: str | Path,
    fmt: str,
    categorical: Any,
    numeric: Any = None,
    *,
    source: str = "given rows",
    plan: Sequence[Mapping[str, Any]] = (),
    encoder: Any = None,
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export ``model`` (a CTR model: ``model(categorical [B, F], numeric [B, N]) -> logits [B]``) to
    ``out/`` as ``fmt`` (:data:`~.formats.FORMATS`) and return the manifest.

    The artifact returns probabilities. It is checked against eager PyTorch on the given rows
    (``categorical`` ``[n, F]`` ids, ``numeric`` ``[n, N]`` or None), at batch sizes up to 1000 and
    at batch size 1; when ``max |Δp| > tolerance`` it raises :class:`ExportCheckFailed` and writes
    nothing. ``encoder`` (the run's :class:`~lightning_afm.data.encoder.Encoder`) is saved to ``out/encoder``; ``plan`` (the
    compression plan's entries, as dicts) goes into the manifest.
    """
    if fmt not in formats.FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {formats.FORMATS}")
    out = Path(out)
    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an export ({MANIFEST_NAME}); choose another folder or overwrite")
    categorical, numeric = _as_arrays(categorical, numeric)
    if categorical.ndim != 2 or len(categorical) == 0:
        raise ValueError(f"the export is verified on real rows: give categorical ids [n >= 1, fields], got shape "
                         f"{categorical.shape}; at least one row (the run's test rows are the usual choice)")
    schema = getattr(model, "schema", None)
    num_numeric = 0 if numeric is None else numeric.shape[1]
    was_training = model.training
    module = formats.probability_module(model, num_numeric)
    # Two example rows: torch.export would fix a batch of one as a constant.
    pick = np.arange(2) % len(categorical)
    example = torch.from_numpy(categorical[pick]), None if numeric is None else torch.from_numpy(numeric[pick])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        artifact, notes = formats.write(module, fmt, staging, *example)
        reference = eager_probabilities(module, categorical, numeric)
        check = verify(formats.load_runner(fmt, artifact), reference, categorical, numeric, source, tolerance)
        if not check.passed:
            raise ExportCheckFailed(
                f"the {fmt} artifact differs from eager PyTorch by max |Δp| = {check.max_abs_diff:.3g} on "
                f"{check.rows} rows ({source}), above the tolerance {tolerance:g}; nothing was written")
        if encoder is not None:
            encoder.save(staging / "encoder")
        categorical_fields = list(schema.categorical_names) if schema is not None else [
            f"field_{i}" for i in range(categorical.shape[1])]
        numeric_fields = list(schema.numeric) if schema is not None else [f"numeric_{i}" for i in range(num_numeric)]
        manifest = build_manifest(
            fmt=fmt, artifact=artifact, model=model, parameters=sum(p.numel() for p in model.parameters()),
            hparams=dict(getattr(model, "hparams", {}) or {}), plan=plan,
            inputs=input_signature(categorical_fields, numeric_fields), verification=check.to_dict(),
            exporter=notes, encoder="encoder" if encoder is not None else None)
        write_manifest(staging, manifest)
        out.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():  # the manifest last: its presence marks a complete export
            if item.name != MANIFEST_NAME:
                _move(item, out / item.name)
        _move(staging / MANIFEST_NAME, out / MANIFEST_NAME)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        model.train(was_training)


def _move(source: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    source.replace(target)
