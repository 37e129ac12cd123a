"""Write a probability module in one serving format and load it back as a callable.

Every format is exported from the same :class:`ProbabilityModel` and read back by its own
runtime, so the verification in :mod:`.verify` checks exactly what a server would run:

========== ============================== =========================== =========================
format     file                           written by                  run by
========== ============================== =========================== =========================
onnx       ``model.onnx``                 ``torch.onnx.export``       ONNX Runtime (CPU)
torchscript ``model.torchscript.pt``      ``torch.jit.script``        ``torch.jit.load``
                                          (``trace`` if script fails)
pt2        ``model.pt2``                  ``torch.export``            ``torch.export.load``
========== ============================== =========================== =========================

The batch dimension is dynamic in every format (checked at two batch sizes by the verifier).
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

FORMATS = ("onnx", "torchscript", "pt2")
FILENAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "pt2": "model.pt2"}
INPUT_NAMES = ("categorical", "numeric")
OUTPUT_NAME = "probability"

#: ``runner(categorical [B, F] int64, numeric [B, N] float32 or None) -> probabilities [B] float64``
Runner = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


class MissingExtra(ImportError):
    """An optional dependency of a format is not installed."""


def require(module: str, fmt: str):
    """Import ``module`` for ``fmt`` or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(f"format={fmt} needs the {module!r} package, which is not installed; "
                           f"install the serving extra: pip install 'lightning-afm[serve]'") from err


class ProbabilityModel(nn.Module):
    """``model`` with the sigmoid applied: ``[B, F]`` int64 ids and ``[B, N]`` float32 -> ``[B]`` probabilities.

    The served artifact returns probabilities, not logits, so a client cannot forget the sigmoid.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(categorical, numeric))


class CategoricalOnly(nn.Module):
    """:class:`ProbabilityModel` for a schema without numeric fields: one input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, categorical: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(categorical))


def probability_module(model: nn.Module, num_numeric: int) -> nn.Module:
    """The module every format exports: probabilities out, one or two inputs, eval mode."""
    module = ProbabilityModel(model) if num_numeric else CategoricalOnly(model)
    return module.eval()


@contextlib.contextmanager
def _lightning_scripting(module: nn.Module) -> Iterator[None]:
    """Let TorchScript walk LightningModules: their ``trainer`` property raises when no Trainer is
    attached, unless ``_jit_is_scripting`` is set (what ``LightningModule.to_torchscript`` does)."""
    flagged = [m for m in module.modules() if hasattr(m, "_jit_is_scripting")]
    for m in flagged:
        m._jit_is_scripting = True
    try:
        yield
    finally:
        for m in flagged:
            m._jit_is_scripting = False


def _example_inputs(categorical: torch.Tensor, numeric: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    return (categorical,) if numeric is None else (categorical, numeric)


def _dynamic_batch(inputs: tuple[torch.Tensor, ...]) -> dict[str, dict[int, object]]:
    batch = torch.export.Dim("batch")
    return {name: {0: batch} for name, _ in zip(INPUT_NAMES, inputs)}


def _write_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> str:
    """TorchScript-based exporter first (about 20x faster than the dynamo one on these models:
    0.4-0.7 s against 12-17 s), the dynamo exporter where it fails or is gone; the verifier checks
    either. Returns which one wrote the file."""
    names = list(INPUT_NAMES[: len(inputs)])
    try:
        with _lightning_scripting(module):
            torch.onnx.export(module, inputs, str(path), input_names=names, output_names=[OUTPUT_NAME],
                              dynamic_axes={name: {0: "batch"} for name in [*names, OUTPUT_NAME]}, dynamo=False)
        return "torch.onnx.export(dynamo=False)"
    except Exception as err:  # noqa: BLE001 - the dynamo exporter is the fallback for any failure
        legacy_error = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160] if str(err).strip() else ''}"
    require("onnxscript", "onnx")
    torch.onnx.export(module, inputs, str(path), input_names=names, output_names=[OUTPUT_NAME],
                      dynamic_shapes=_dynamic_batch(inputs), dynamo=True, external_data=False,
                      verbose=False)
    return f"torch.onnx.export(dynamo=True) (the TorchScript-based exporter failed: {legacy_error})"


def write(module: nn.Module, fmt: str, directory: Path, categorical: torch.Tensor,
          numeric: torch.Tensor | None) -> tuple[Path, dict[str, str]]:
    """Export ``module`` (from :func:`probability_module`) to ``directory``; returns the file and notes
    (e.g. which TorchScript path was taken)."""
    inputs = _example_inputs(categorical, numeric)
    path = directory / FILENAMES[fmt]
    notes: dict[str, str] = {}
    # Exported with autograd on: the traced graph is the plain forward, not a no-grad fast path
    # built on ops an exporter may lack (e.g. reinterpreting float rows as integer words).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporters warn about their own internals
        if fmt == "onnx":
            require("onnx", fmt)
            notes["exporter"] = _write_onnx(module, inputs, path)
        elif fmt == "torchscript":
            try:
                with _lightning_scripting(module):
                    scripted = torch.jit.script(module)
                notes["exporter"] = "torch.jit.script"
            except Exception as err:  # noqa: BLE001 - any scripting failure falls back to tracing
                with _lightning_scripting(module):
                    scripted = torch.jit.trace(module, inputs, check_trace=False)
                reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
                notes["exporter"] = f"torch.jit.trace (torch.jit.script failed: {type(err).__name__} {reason})"
            torch.jit.save(scripted, str(path))
        elif fmt == "pt2":
            program = torch.export.export(module, inputs, dynamic_shapes=_dynamic_batch(inputs))
            torch.export.save(program, str(path))
            notes["exporter"] = "torch.export"
        else:
            raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    return path, notes


def load_runner(fmt: str, path: Path, threads: int | None = None, spinning: bool = True) -> Runner:
    """A callable that runs the artifact at ``path`` with its own runtime.

    ``spinning=False`` (ONNX only): the session's worker threads sleep as soon as a run ends instead
    of spinning for the next one. A process that runs several sessions, or a session and PyTorch,
    in turn on few cores wants that: on 2 cores (AMD EPYC family 26, 2 threads) an idle session's
    spinning worker slowed the others' runs by more than 2x (`benchmarks/bench_onnx_spinning.py`).
    """
    if fmt == "onnx":
        ort = require("onnxruntime", fmt)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(categorical: np.ndarray, numeric: np.ndarray | None) -> np.ndarray:
            feed = {names[0]: categorical} if numeric is None else {names[0]: categorical, names[1]: numeric}
            return np.asarray(session.run(None, feed)[0], dtype=np.float64).reshape(-1)

        return run_onnx
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
    elif fmt == "pt2":
        module = torch.export.load(str(path)).module()
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")

    def run_torch(categorical: np.ndarray, numeric: np.ndarray | None) -> np.ndarray:
        inputs = (torch.from_numpy(categorical),) if numeric is None else (
            torch.from_numpy(categorical), torch.from_numpy(numeric))
        with torch.inference_mode():
            return module(*inputs).double().numpy().reshape(-1)

    return run_torch
