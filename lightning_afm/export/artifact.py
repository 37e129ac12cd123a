"""Export a CTR model to a serving format, verify it, and write it with its manifest, all or nothing."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lightning_afm.export import formats
from lightning_afm.export.formats import MissingExtra
from lightning_afm.export.manifest import MANIFEST_NAME, build_manifest, input_signature, write_manifest
from lightning_afm.inference import optimize_for_inference
from lightning_afm.export.int8 import onnx_weight_bytes, quantize_onnx_matmuls, quantize_tables
from lightning_afm.export.verify import (DEFAULT_TOLERANCE, auc_and_logloss, eager_probabilities, run_in_batches,
                                         verify)

#: The test AUC an int8 export may lose against fp32 (the paper: a 0.1 % AUC loss is not adopted).
DEFAULT_MAX_AUC_DROP = 1e-3


class ExportCheckFailed(RuntimeError):
    """The artifact's probabilities differ from eager PyTorch by more than the tolerance."""


def _as_arrays(categorical: Any, numeric: Any) -> tuple[np.ndarray, np.ndarray | None]:
    categorical = np.ascontiguousarray(np.asarray(categorical, dtype=np.int64))
    if numeric is not None:
        numeric = np.ascontiguousarray(np.asarray(numeric, dtype=np.float32))
        if numeric.ndim == 2 and numeric.shape[1] == 0:  # a schema without numeric fields: one input
            numeric = None
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
    labels: Any = None,
    int8: bool = False,
    max_auc_drop: float = DEFAULT_MAX_AUC_DROP,
    force: bool = False,
) -> dict[str, Any]:
    """Export ``model`` (a CTR model: ``model(categorical [B, F], numeric [B, N]) -> logits [B]``) to
    ``out/`` as ``fmt`` (:data:`~.formats.FORMATS`) and return the manifest.

    The artifact returns probabilities. It is checked against eager PyTorch on the given rows
    (``categorical`` ``[n, F]`` ids, ``numeric`` ``[n, N]`` or None), at batch sizes up to 1000 and
    at batch size 1; when ``max |Δp| > tolerance`` it raises :class:`ExportCheckFailed` and writes
    nothing. ``encoder`` (the run's :class:`~lightning_afm.data.encoder.Encoder`) is saved to ``out/encoder``; ``plan`` (the
    compression plan's entries, as dicts) goes into the manifest.

    ``int8=True`` (ONNX only) stores every table row-wise in int8 (:mod:`.int8`) and lets ONNX
    Runtime quantise the matrix products. Its check is accuracy, not |Δp|: test AUC and logloss
    on the rows against their ``labels`` ``[n]`` and the fp32 model's; an AUC drop above
    ``max_auc_drop`` (0.001) raises :class:`ExportCheckFailed` unless ``force``. |Δp| is reported.
    """
    if fmt not in formats.FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {formats.FORMATS}")
    if int8 and fmt != "onnx":
        raise ValueError(f"int8 export is ONNX Runtime's dynamic quantisation: use format=onnx, not {fmt!r}")
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
        reference = eager_probabilities(module, categorical, numeric)
        if int8:
            artifact, notes, check = _int8_onnx(model, staging, example, categorical, numeric, labels, reference,
                                                source, max_auc_drop, force)
        else:
            artifact, notes, check = first_form_that_verifies(
                model, num_numeric, fmt, staging, example,
                lambda path: verify(formats.load_runner(fmt, path), reference, categorical, numeric, source,
                                    tolerance).to_dict())
        if encoder is not None:
            encoder.save(staging / "encoder")
        categorical_fields = list(schema.categorical_names) if schema is not None else [
            f"field_{i}" for i in range(categorical.shape[1])]
        numeric_fields = list(schema.numeric) if schema is not None else [f"numeric_{i}" for i in range(num_numeric)]
        manifest = build_manifest(
            fmt=fmt, artifact=artifact, model=model, parameters=sum(p.numel() for p in model.parameters()),
            hparams=dict(getattr(model, "hparams", {}) or {}), plan=plan,
            inputs=input_signature(categorical_fields, numeric_fields), verification=check,
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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # exporters colour their messages


def serving_forms(model: nn.Module, num_numeric: int, fmt: str) -> list[tuple[str, nn.Module]]:
    """What to export, best first, as probability modules: the inference layer's form (what a
    server should run: batched gathers, fused projections; a copy of the weights), then the
    model's plain eval forward. For ONNX every structure's tables are fused whatever their row
    width (``fuse="all"``): ONNX Runtime pays per node at small batches, and one Gather of the
    fused table replaces a Gather per field and their Concat (baseline DeepFM at the Criteo shape:
    33 nodes after ORT's optimisation instead of 155, about half the batch-1 latency on one
    thread of an AMD EPYC), so the
    baseline gets its fastest form too."""
    forms = []
    try:
        fuse = "all" if fmt == "onnx" else None  # None: fused as copy=True fuses (word-sized rows)
        forms.append(("inference layer (optimize_for_inference)", optimize_for_inference(model, copy=True, fuse=fuse)))
    except (TypeError, ValueError):  # not one of the zoo's models: its own forward is all there is
        pass
    forms.append(("plain eval forward", model))
    return [(label, formats.probability_module(form, num_numeric)) for label, form in forms]


def first_form_that_verifies(model: nn.Module, num_numeric: int, fmt: str, staging: Path, example: tuple,
                             check: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, str], dict[str, Any]]:
    """Write each of :func:`serving_forms` in turn until one exports and passes ``check`` (its
    artifact's path -> a :class:`~.verify.Verification` dict); returns the artifact, the exporter
    notes (which form, which exporter, the forms that failed and why) and the check. Nothing
    verified: :class:`ExportCheckFailed`."""
    failures = []
    for label, module in serving_forms(model, num_numeric, fmt):
        try:
            artifact, notes = formats.write(module, fmt, staging, *example)
        except MissingExtra:
            raise
        except Exception as err:  # noqa: BLE001 - an exporter's failure on one form: try the next form
            first_line = _ANSI.sub("", (str(err).strip().splitlines() or [""])[0])[:200]
            failures.append(f"{label}: {type(err).__name__}: {first_line}")
            continue
        result = check(artifact)
        if result["passed"]:
            if failures:
                notes["forms_that_failed"] = "; ".join(failures)
            return artifact, {"form": label, **notes}, result
        failures.append(f"{label}: the {fmt} artifact differs from eager PyTorch by max |Δp| = "
                        f"{result['max_abs_diff']:.3g} on {result['rows']} rows ({result['source']}), above the "
                        f"tolerance {result['tolerance']:g}")
        artifact.unlink()
    raise ExportCheckFailed("; ".join(failures) + "; nothing was written")


def _int8_onnx(model: nn.Module, staging: Path, example: tuple, categorical: np.ndarray, numeric: np.ndarray | None,
               labels: Any, reference: np.ndarray, source: str, max_auc_drop: float,
               force: bool) -> tuple[Path, dict[str, str], dict[str, Any]]:
    """Int8 tables + ONNX Runtime's int8 products; returns the artifact, notes and the accuracy check."""
    if labels is None:
        raise ValueError("an int8 export is checked by its test AUC, which needs labelled rows (the run's test "
                         "split has them); give labels, or export in fp32")
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if len(labels) != len(categorical):
        raise ValueError(f"{len(labels)} labels for {len(categorical)} rows")
    def matches_quantized_tables(path: Path) -> dict[str, Any]:  # the graph before its products are quantised
        return verify(formats.load_runner("onnx", path), eager_probabilities(quantized_module, categorical, numeric),
                      categorical, numeric, source, DEFAULT_TOLERANCE).to_dict()

    quantized = quantize_tables(model)
    quantized_module = formats.probability_module(quantized, 0 if numeric is None else numeric.shape[1])
    tables_only, notes, _ = first_form_that_verifies(quantized, 0 if numeric is None else numeric.shape[1], "onnx",
                                                      staging, example, matches_quantized_tables)
    artifact = staging / "model.int8.onnx"
    quantized_products = quantize_onnx_matmuls(str(tables_only), str(artifact))
    tables_only.unlink()
    got = run_in_batches(formats.load_runner("onnx", artifact), categorical, numeric)
    fp32_auc, fp32_logloss = auc_and_logloss(reference, labels)
    int8_auc, int8_logloss = auc_and_logloss(got, labels)
    check = {"rows": len(categorical), "source": source, "max_abs_diff": float(np.max(np.abs(got - reference))),
             "fp32_auc": fp32_auc, "int8_auc": int8_auc, "auc_change": int8_auc - fp32_auc,
             "fp32_logloss": fp32_logloss, "int8_logloss": int8_logloss, "logloss_change": int8_logloss - fp32_logloss,
             "max_auc_drop": float(max_auc_drop), "fp32_parameter_bytes": 4 * sum(p.numel() for p in model.parameters()),
             "int8_weight_bytes": onnx_weight_bytes(str(artifact))}
    check["passed"] = bool(check["auc_change"] >= -max_auc_drop)
    check["forced"] = bool(force and not check["passed"])
    if not check["passed"] and not force:
        raise ExportCheckFailed(
            f"int8 loses {-check['auc_change']:.4f} test AUC ({fp32_auc:.4f} -> {int8_auc:.4f} on {len(labels)} rows, "
            f"{source}), more than {max_auc_drop:g}; nothing was written (force=true writes it anyway)")
    notes["int8"] = ("tables: int8 rows with a float32 scale and offset per row (per block of rows for tables "
                     f"narrower than 8); matrix products: onnxruntime quantize_dynamic, int8 weights per channel "
                     f"({quantized_products} products by a 2-D weight)")
    return artifact, notes, check


def _move(source: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    source.replace(target)
