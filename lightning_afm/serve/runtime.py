"""The model side of serving: rebuild the LightningModule from a checkpoint dict, make it ready for inference.

No Trainer: the class named in the checkpoint (``CTRModel`` writes it, :data:`MODEL_CLASS_KEY`) is
built from the saved hyper-parameters, given the compressed structure by its own
``on_load_checkpoint`` (a compressed checkpoint replays its plan there), then its weights.
"""

from __future__ import annotations

import importlib
import warnings
import inspect
from typing import Any, Mapping

import torch
from torch import nn

from lightning_afm.models.base import MODEL_CLASS_KEY


class ServeError(ValueError):
    """Serving cannot proceed with what it was given (which model class, which encoder); says how to fix it."""


#: How serving runs a zoo model: ``auto`` (the default: ``onnx`` for requests of up to
#: :data:`AUTO_ONNX_MAX_ROWS` rows, ``torchscript`` above, or ``eager`` above where the inference form
#: runs a native kernel (:func:`large_request_module`); ``torchscript`` alone without the ``serve``
#: extra), ``torchscript`` (the inference layer compiled by ``torch.jit.script``: fastest in
#: ``benchmarks/bench_serving.py`` from batch 1,024 and about 3x faster than ``eager`` at batch 1),
#: ``eager`` (the inference layer in eager PyTorch) or ``onnx`` (the inference form exported and
#: checked at load, run by ONNX Runtime: about 3x faster than ``torchscript`` at batch 1).
RUNTIMES = ("auto", "torchscript", "eager", "onnx")

#: ``runtime="auto"`` sends forward passes of up to this many rows to ONNX Runtime, larger ones to
#: TorchScript: where the two cross in ``benchmarks/bench_serving.py --threads 1 --batches 1 16 64
#: 128 256 1024 --runtimes torchscript onnx`` (DeepFM at the Criteo shape, baseline and +AFM EMB,
#: one thread; AMD EPYC, loaded machine, 2026-11-30): ONNX Runtime 1.3x to 4x faster at 1 to 128 rows, the
#: two within the machine's noise at 256 (each ahead in one of two runs), TorchScript 1.1x to 1.4x
#: faster at 1,024. README, "Serving latency".
AUTO_ONNX_MAX_ROWS = 256

#: Where large requests run a native kernel (:func:`large_request_module`: AutoInt) on one torch
#: thread, eager PyTorch overtakes ONNX Runtime much sooner, so ``runtime="auto"`` sends ONNX Runtime
#: only up to this many rows (:func:`auto_onnx_max_rows`). ``benchmarks/bench_serving.py --model
#: autoint --threads 1 --batches 1 4 16 32 64 128 256 --runtimes inference onnx`` (Criteo shape,
#: +AFM EMB, p50; AMD EPYC, quiet, 2026-12-01): 0.80 against 0.59 ms at 16 rows, 1.02 against 1.01
#: at 32, 1.46 against 1.86 at 64, 2.33 against 3.58 at 128, 4.03 against 6.99 at 256 (eager
#: first; the baseline alike, p99 alike). On two threads eager's p99 was the worse from 64 to 256
#: rows (5.0 against 2.1 ms at 64), so the default threshold stays there.
AUTO_NATIVE_ONNX_MAX_ROWS = 48


def auto_onnx_max_rows(native_large_requests: bool) -> int:
    """The most rows of one forward pass that ``runtime="auto"`` sends to ONNX Runtime, read per call
    (the thread count may change): :data:`AUTO_NATIVE_ONNX_MAX_ROWS` where large requests run a native
    kernel and torch runs one thread, else :data:`AUTO_ONNX_MAX_ROWS`."""
    if native_large_requests and torch.get_num_threads() == 1:
        return AUTO_NATIVE_ONNX_MAX_ROWS
    return AUTO_ONNX_MAX_ROWS


def runs_native_kernels(module: nn.Module) -> bool:
    """Whether ``module`` (an eager inference form) runs a compiled kernel of
    :mod:`lightning_afm.inference.native` (AutoInt's attention, where it built), which TorchScript
    and ONNX cannot carry: eager PyTorch then serves large requests faster than TorchScript."""
    from lightning_afm.inference.attention import InferenceInteracting

    return any(isinstance(m, InferenceInteracting) and m.query.device.type == "cpu" and m.current_kernel() == "native"
               for m in module.modules())


def large_request_module(model: nn.Module) -> nn.Module:
    """What ``runtime="auto"`` runs for requests above :data:`AUTO_ONNX_MAX_ROWS` rows: the eager
    inference form where it runs a native kernel (:func:`runs_native_kernels`; AutoInt at the Criteo
    shape, 1 thread: 14.3 ms at 1,024 rows against 27.9 ms in TorchScript, README "Serving
    latency"), else :func:`inference_module`'s TorchScript module."""
    fast = inference_module(model, "eager")
    if fast is not model and runs_native_kernels(fast):
        return fast
    return inference_module(model, "torchscript")


def inference_module(model: nn.Module, runtime: str = "torchscript") -> nn.Module:
    """The module serving calls: the model in eval mode without gradients, in its inference-layer
    form (:func:`lightning_afm.inference.optimize_for_inference` with ``fuse=True``: one gather of every
    field's codes and LR weight from a fused copy of the tables, fused projections, the rest sharing
    the model's weights) when it is one of the zoo's models, compiled by TorchScript unless
    ``runtime="eager"``; a user's own module is called as it is. Every serving path goes through here."""
    from lightning_afm.inference import optimize_for_inference

    if runtime not in RUNTIMES:
        raise ServeError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime in ("onnx", "auto"):
        raise ServeError(f"runtime={runtime!r} is not a torch module: Predictor(runtime={runtime!r}) builds its "
                         "OnnxRunner (and its TorchScript module)")
    model.eval()
    model.requires_grad_(False)
    try:
        fast = optimize_for_inference(model, fuse=True)  # a served model is not trained: fuse its tables
    except (TypeError, ValueError):  # a user's own module: its eval forward is what there is
        return model
    if runtime == "eager":
        return fast
    try:
        return torch.jit.script(fast)
    except Exception as err:  # noqa: BLE001 - a structure TorchScript cannot compile is served in eager mode
        warnings.warn(f"TorchScript could not compile this model's inference form ({type(err).__name__}); "
                      "serving it in eager mode", stacklevel=2)
        return fast


def resolve_class(name: str | type | None, checkpoint: Mapping[str, Any]) -> type[nn.Module]:
    """The model class: ``name`` (a class, or ``"package.module.Class"``), else the one the checkpoint names."""
    name = name if name is not None else checkpoint.get(MODEL_CLASS_KEY)
    if name is None:
        raise ServeError(
            "the checkpoint does not name its model class (lightning-afm's models do; this one is another "
            "LightningModule): pass it, model_class=MyModule (Python) or --model-class package.module.MyModule"
        )
    if isinstance(name, str):
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ServeError(f"cannot import the model class {name!r} ({exc}); is its package installed?") from exc
    else:
        cls = name
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ServeError(f"{name!r} is not a torch.nn.Module class")
    return cls


def load_model(checkpoint: Mapping[str, Any], model_class: str | type | None = None) -> nn.Module:
    """A model with the checkpoint's structure and weights (``checkpoint``: a loaded ``.ckpt`` dict)."""
    cls = resolve_class(model_class, checkpoint)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        hparams = {k: v for k, v in hparams.items() if k in params}
    model = cls(**hparams)
    if hasattr(model, "on_load_checkpoint"):
        model.on_load_checkpoint(dict(checkpoint))  # compressed models rebuild their factored structure here
    if "state_dict" not in checkpoint:
        raise ServeError("the checkpoint has no state_dict: is it a Lightning checkpoint (.ckpt)?")
    model.load_state_dict(checkpoint["state_dict"])
    return model
