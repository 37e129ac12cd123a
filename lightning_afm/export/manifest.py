"""The manifest written next to an exported artifact: what it is, what it takes, how it was checked.

``manifest.json`` (format version :data:`MANIFEST_VERSION`)::

    {"manifest_version": 1, "format": "onnx", "file": "model.onnx", "sha256": "...", "bytes": 123,
     "model": {"class": "lightning_afm.models.deepfm.DeepFM", "parameters": 1234, "hparams": {...},
               "weights_sha256": "..."},
     "compression": {"plan": [...], "factored_modules": [{"name": "mlp.1.linear", "type": "LowRankLinear",
                     "rank": 64}, ...]},
     "inputs": [{"name": "categorical", "dtype": "int64", "shape": ["batch", 26], "fields": [...]},
                {"name": "numeric", "dtype": "float32", "shape": ["batch", 13], "fields": [...]}],
     "output": {"name": "probability", "dtype": "float32", "shape": ["batch"]},
     "verification": {"rows": 1000, "source": "...", "batch_sizes": [...], "max_abs_diff": 6e-8,
                      "tolerance": 1e-5, "passed": true},
     "exporter": {...}, "versions": {"torch": "...", ...}, "encoder": "encoder" | null}

``weights_sha256`` (:func:`weights_sha256`) identifies the weights the artifact was exported from, so
serving can reuse a verified export of the same weights instead of exporting again
(:mod:`lightning_afm.export.reuse`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from lightning_afm.export.formats import INPUT_NAMES, OUTPUT_NAME

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
_RANK_ATTRIBUTES = ("rank", "code_dim", "tt_rank", "collisions", "num_subspaces", "num_centroids")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """A checksum of ``model``'s weights: every ``state_dict`` entry's name, dtype, shape and bytes, in
    the ``state_dict``'s order. Equal for two models loaded from one checkpoint (same structure, same
    values); any changed value, shape or parameter name changes it."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):  # a module's extra state: its repr stands for it
            digest.update(f"{name}={value!r};".encode())
            continue
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)  # the raw bytes, whatever the dtype
    return digest.hexdigest()


def factored_modules(model: nn.Module) -> list[dict[str, Any]]:
    """Every module of ``lightning_afm.compress`` inside ``model``, with its rank attributes."""
    found = []
    for name, module in model.named_modules():
        if type(module).__module__.startswith("lightning_afm.compress"):
            entry = {"name": name, "type": type(module).__name__}
            entry.update({a: int(getattr(module, a)) for a in _RANK_ATTRIBUTES if isinstance(getattr(module, a, None), int)})
            found.append(entry)
    return found


def _versions(packages: Sequence[str]) -> dict[str, str]:
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def input_signature(categorical_fields: Sequence[str], numeric_fields: Sequence[str]) -> list[dict[str, Any]]:
    inputs = [{"name": INPUT_NAMES[0], "dtype": "int64", "shape": ["batch", len(categorical_fields)],
               "fields": list(categorical_fields)}]
    if numeric_fields:
        inputs.append({"name": INPUT_NAMES[1], "dtype": "float32", "shape": ["batch", len(numeric_fields)],
                       "fields": list(numeric_fields)})
    return inputs


def build_manifest(*, fmt: str, artifact: Path, model: nn.Module, parameters: int, hparams: Mapping[str, Any],
                   plan: Sequence[Mapping[str, Any]], inputs: list[dict[str, Any]], verification: dict[str, Any],
                   exporter: Mapping[str, str], encoder: str | None) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "format": fmt,
        "file": artifact.name,
        "sha256": sha256(artifact),
        "bytes": artifact.stat().st_size,
        "model": {"class": f"{type(model).__module__}.{type(model).__qualname__}", "parameters": int(parameters),
                  "hparams": json.loads(json.dumps(dict(hparams), default=str)), "weights_sha256": weights_sha256(model)},
        "compression": {"plan": [dict(e) for e in plan], "factored_modules": factored_modules(model)},
        "inputs": inputs,
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch"]},
        "verification": verification,
        "exporter": dict(exporter),
        "versions": _versions(("lightning-afm", "torch", "lightning", "onnx", "onnxscript", "onnxruntime")),
        "encoder": encoder,
    }


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> Path:
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest_version {manifest.get('manifest_version')!r} is not "
                         f"{MANIFEST_VERSION}; export again with this version of lightning-afm")
    return manifest
