"""The runtime that executes a variant's inference form in the bench: eager, TorchScript, torch.compile, ONNX Runtime.

=============== =====================================================================================
``eager``       the inference form (:func:`lightning_afm.inference.optimize_for_inference`) as it is
``torchscript`` that module written and loaded back by :mod:`lightning_afm.export.formats`
                (``torch.jit.script``, ``trace`` where scripting fails), run by ``torch.jit.load``
``compile``     ``torch.compile`` with the inductor backend on CPU (static batch shape); compiled and
                warmed up on the first batch in :func:`prepare`, so compilation is never timed
``onnx``        that module exported to ONNX by :mod:`lightning_afm.export.formats` and run by ONNX
                Runtime's CPU provider with the process's torch thread count
=============== =====================================================================================

A runtime that cannot run a model (an exporter or compiler error) raises
:class:`RuntimeUnavailable` with the reason, which the bench reports in that row instead of crashing.
The exporters may refuse a no-grad fast path of the inference form (ONNX has no op that
reinterprets float rows as integer words); given ``export_fallback`` (the model the inference form
was built from), :func:`prepare` then exports that model's plain forward, as ``lightning-afm-export``
does, and says so in :attr:`Prepared.note`.

Example:
    >>> import torch
    >>> from lightning_afm.bench.throughput import InferenceBatch
    >>> class Logit(torch.nn.Module):
    ...     def forward(self, categorical, numeric):
    ...         return numeric.sum(dim=1) + categorical.sum(dim=1).float()
    >>> batch = InferenceBatch(torch.zeros(4, 2, dtype=torch.int64), torch.ones(4, 3))
    >>> timed = prepare(Logit(), "eager", [batch]).timed
    >>> timed.forward(timed.inputs[0]).tolist()
    [3.0, 3.0, 3.0, 3.0]
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_afm.bench.throughput import InferenceBatch, Timed

__all__ = ["RUNTIMES", "RuntimeUnavailable", "Prepared", "check_runtime", "prepare"]

RUNTIMES = ("eager", "torchscript", "compile", "onnx")


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot run this model (the message says why)."""


@dataclass
class Prepared:
    """What :func:`prepare` built: the runner to time and, when it is not the module asked for, why."""

    timed: Timed
    note: str | None = None


def check_runtime(runtime: str) -> str:
    """``runtime`` lower-cased; ValueError naming the valid ones if it is not one of :data:`RUNTIMES`."""
    name = str(runtime).lower()
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {list(RUNTIMES)}")
    return name


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


class _CategoricalOnly(nn.Module):
    """``module(categorical, [B, 0] numeric)`` with one input, for a shape without numeric fields
    (Avazu): an exported graph would drop the empty input, and the runner then feeds one."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, categorical: torch.Tensor) -> torch.Tensor:
        return self.module(categorical, categorical[:, :0].float())  # [B, 0], traced with a dynamic batch


def _numpy_inputs(batch: InferenceBatch) -> tuple[Any, Any]:
    """``(categorical, numeric or None)`` as zero-copy numpy views, as the exported runners take them."""
    numeric = batch.numeric.numpy() if batch.numeric.shape[1] else None
    return batch.categorical.numpy(), numeric


def _exported(module: nn.Module, fmt: str, example: InferenceBatch):
    """Write ``module`` in ``fmt`` with :mod:`lightning_afm.export.formats` and load its runner back."""
    from lightning_afm.export import formats  # the serving extra's imports only when asked for

    categorical, numeric = example.categorical, example.numeric
    if not numeric.shape[1]:
        module, numeric = _CategoricalOnly(module), None
    with tempfile.TemporaryDirectory(prefix=f"afm-bench-{fmt}-") as tmp:
        # the runner reads the whole file when it is loaded, so the folder can go afterwards
        path, _ = formats.write(module.eval(), fmt, Path(tmp), categorical, numeric)
        # no spinning: the bench runs several sessions and PyTorch in turn in one process, and on few
        # cores an idle session's spinning worker would slow whichever variant runs next
        return formats.load_runner(fmt, path, threads=torch.get_num_threads(), spinning=False)


def _build(module: nn.Module, runtime: str, batches: list[InferenceBatch]) -> Timed:
    """The runner of ``module`` on ``runtime``, run once on ``batches[0]`` (any error propagates)."""
    if runtime in ("torchscript", "onnx"):
        runner = _exported(module, runtime, batches[0])
        run, inputs = (lambda arrays: runner(*arrays)), [_numpy_inputs(b) for b in batches]
    else:  # compile: a static batch shape, as the bench's batches all have one size
        compiled: Any = torch.compile(module, backend="inductor", dynamic=False)
        run, inputs = (lambda b: compiled(b.categorical, b.numeric)), batches
    with torch.inference_mode():
        run(inputs[0])  # compiles (inductor) / initialises the session, untimed
    return Timed(run, inputs)


def prepare(
    module: nn.Module, runtime: str, batches: list[InferenceBatch], export_fallback: nn.Module | None = None
) -> Prepared:
    """A runner of ``module(categorical, numeric)`` on each of ``batches`` with ``runtime``.

    Every runtime but ``eager`` is built and run once on ``batches[0]`` here (compilation, export
    and the first call's set-up happen outside any timing), under ``torch.inference_mode`` as the
    timer runs. Where ``torchscript`` or ``onnx`` fails on ``module`` and ``export_fallback`` is
    given, that module is exported instead (noted). Raises :class:`RuntimeUnavailable` when the
    runtime fails on both.
    """
    runtime = check_runtime(runtime)
    if not batches:
        raise ValueError("prepare needs at least one batch (the first is the export and warm-up example)")
    if runtime == "eager":
        return Prepared(Timed(lambda b: module(b.categorical, b.numeric), batches))
    try:
        return Prepared(_build(module, runtime, batches))
    except Exception as err:  # noqa: BLE001 - any failure of an exporter or compiler is reported, not raised
        first = f"runtime={runtime} cannot run the inference form ({_first_line(err)})"
        if export_fallback is None or runtime == "compile":
            raise RuntimeUnavailable(first) from err
    try:
        return Prepared(_build(export_fallback.eval(), runtime, batches), f"{first}; ran the plain model instead")
    except Exception as err:  # noqa: BLE001 - as above
        raise RuntimeUnavailable(f"{first}, nor the plain model ({_first_line(err)})") from err
