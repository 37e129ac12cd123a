"""Serving in ONNX Runtime: the model exported at load time, checked against eager PyTorch, run by ORT.

At batch 1 a call of the compiled PyTorch inference form is mostly the fixed cost of its ops'
dispatch; ONNX Runtime runs the exported inference form (one Gather of the fused tables, the
code-space FM, the factored MLP: 30 to 40 nodes for DeepFM) for about a third of that
(README, "Serving latency"). This is ``Predictor(runtime="onnx")`` / ``--runtime onnx``, and what
``runtime="auto"`` runs for small requests.
"""

from __future__ import annotations

import importlib.util
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .runtime import ServeError

#: Random rows the export is checked on at load (batch sizes up to 1,000 and 1, as the export command).
CHECK_ROWS = 256


def session_options(ort, threads: int):
    """ONNX Runtime's options for serving: every graph optimisation (constant folding, Gemm + ReLU
    fusion), ``threads`` intra-op threads and one inter-op thread (one graph at a time: a second
    pool would only wait), nodes run in sequence (the graphs are chains)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


class OnnxRunner:
    """``model`` exported to ONNX in its fastest form that verifies (the inference layer's, else its
    plain eval forward: :func:`lightning_afm.export.artifact.serving_forms`), checked against eager
    PyTorch (max |Δp| <= 1e-5) on :data:`CHECK_ROWS` random ids within its vocabularies, then held
    by an ONNX Runtime session. ``form`` says which form runs (and why others did not).

    With ``artifact`` (a verified export of the same weights: :func:`lightning_afm.export.reuse.find_verified_onnx`)
    that file is opened instead of exporting again, and checked the same way; ``reused`` is then
    its path (None when the model was exported here). If it fails the check, the model is exported.

    Call: ``categorical`` ``[B, F]`` int64 and ``numeric`` ``[B, N]`` float32 arrays (C-contiguous)
    -> probabilities ``float32 [B]`` (the artifact applies the sigmoid).
    """

    def __init__(self, model: nn.Module, threads: int | None = None, artifact: Path | None = None) -> None:
        from lightning_afm.export import formats
        from lightning_afm.export.artifact import ExportCheckFailed, first_form_that_verifies
        from lightning_afm.export.verify import eager_probabilities, verify

        schema = getattr(model, "schema", None)
        if schema is None:
            raise ServeError("runtime='onnx' checks the export on ids drawn from the model's vocabularies, and this "
                             "model has no schema; serve it with runtime='torchscript' or 'eager'")
        try:
            ort = formats.require("onnxruntime", "onnx")
            formats.require("onnx", "onnx")
        except formats.MissingExtra as err:  # an ImportError: said as a ServeError, like every other serving problem
            raise ServeError(f"runtime='onnx': {err}") from err
        rng = np.random.default_rng(0)
        categorical = np.stack([rng.integers(0, v, CHECK_ROWS) for v in schema.vocab_sizes], 1).astype(np.int64)
        numeric = rng.random((CHECK_ROWS, schema.num_numeric), dtype=np.float32) if schema.num_numeric else None
        self.num_numeric = schema.num_numeric
        self._empty = np.zeros(0, dtype=np.float32)
        reference = eager_probabilities(formats.probability_module(model, self.num_numeric), categorical, numeric)
        options = session_options(ort, threads or torch.get_num_threads())
        source = f"{CHECK_ROWS} random ids within the model's vocabularies"

        def open_and_check(path: Path) -> dict:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._names = [i.name for i in self.session.get_inputs()]
            self._outputs = [self.session.get_outputs()[0].name]
            self.check = verify(lambda c, n: self(c, n).astype(np.float64), reference, categorical, numeric, source)
            return self.check.to_dict()

        self.reused: Path | None = None
        if artifact is not None:
            try:
                passed = open_and_check(Path(artifact))["passed"]
                problem = f"differs from eager PyTorch by max |Δp| = {self.check.max_abs_diff:.3g}"
            except Exception as err:  # noqa: BLE001 - e.g. a file this ONNX Runtime cannot read: export instead
                passed, problem = False, f"does not open ({type(err).__name__})"
            if passed:
                self.reused, self.form = Path(artifact), f"verified export {artifact} (reused, not exported again)"
                return
            warnings.warn(f"runtime='onnx': the export {artifact} {problem}; exporting the model again", stacklevel=2)
        example = (torch.from_numpy(categorical[:2]), None if numeric is None else torch.from_numpy(numeric[:2]))
        with tempfile.TemporaryDirectory(prefix="lightning-afm-onnx-") as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter warns about its own internals
            try:  # the session reads the whole file when it opens: the folder can go
                _, notes, _ = first_form_that_verifies(model, self.num_numeric, "onnx", Path(folder), example,
                                                       open_and_check)
            except ExportCheckFailed as err:
                raise ServeError(f"runtime='onnx': no form of this model exports to ONNX Runtime within max |Δp| "
                                 f"<= 1e-5 of eager PyTorch ({err}); serve with runtime='torchscript' instead") from err
        self.form = notes["form"] + (f" (tried first: {notes['forms_that_failed']})" if "forms_that_failed" in notes else "")

    def __call__(self, categorical: np.ndarray, numeric: np.ndarray) -> np.ndarray:
        if len(categorical) == 0:  # the graph reshapes by -1, which a batch of 0 rows cannot infer
            return self._empty
        feed = {self._names[0]: categorical}
        if self.num_numeric:
            feed[self._names[1]] = numeric
        return self.session.run(self._outputs, feed)[0].reshape(-1)


def optional_onnx_runner(model: nn.Module, artifact: Path | None = None) -> OnnxRunner | None:
    """``runtime="auto"``'s ONNX half: an :class:`OnnxRunner` on one intra-op thread, or None (the
    request then goes to TorchScript) when the ``serve`` extra is not installed or the model is not
    one ONNX can serve (no schema: a user's own module). A model whose every export fails the check
    warns and is served by TorchScript alone. ``artifact``: as :class:`OnnxRunner`'s.

    One thread: ``runtime="auto"`` sends ONNX Runtime small requests only, where a second thread
    only adds its hand-off (README, "Serving latency": batch 1 took 0.148 ms on one thread and
    0.253 ms on two, baseline DeepFM, AMD EPYC).
    """
    if any(importlib.util.find_spec(name) is None for name in ("onnxruntime", "onnx")):
        return None
    if getattr(model, "schema", None) is None:
        return None
    model.eval().requires_grad_(False)
    try:
        return OnnxRunner(model, threads=1, artifact=artifact)
    except ServeError as err:
        warnings.warn(f"runtime='auto' serves every request with TorchScript: {err}", stacklevel=3)
        return None
