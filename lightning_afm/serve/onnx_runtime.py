"""Serving in ONNX Runtime: the model exported at load time, checked against eager PyTorch, run by ORT.

At batch 1 a call of the compiled PyTorch inference form is mostly the fixed cost of its ops'
dispatch (one gather per field); ONNX Runtime runs the same graph for about half that
(README, "Serving latency"). This is ``Predictor(runtime="onnx")`` / ``--runtime onnx``.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .runtime import ServeError

#: Random rows the export is checked on at load (batch sizes up to 1,000 and 1, as the export command).
CHECK_ROWS = 256


class OnnxRunner:
    """``model`` exported to ONNX and checked against eager PyTorch (max |Δp| <= 1e-5) on
    :data:`CHECK_ROWS` random ids within its vocabularies, then held by an ONNX Runtime session.

    Call: ``categorical`` ``[B, F]`` int64 and ``numeric`` ``[B, N]`` float32 arrays -> probabilities
    ``float32 [B]`` (the artifact applies the sigmoid).
    """

    def __init__(self, model: nn.Module, threads: int | None = None) -> None:
        from lightning_afm.export import formats
        from lightning_afm.export.verify import DEFAULT_TOLERANCE, eager_probabilities, verify

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
        # The model's plain eval forward, as the serving benchmark's ONNX cells: TorchScript's ONNX
        # exporter takes it in well under a second, where the inference layer's form falls through
        # to the dynamo exporter (tens of seconds at load).
        module = formats.probability_module(model, self.num_numeric)
        example = (torch.from_numpy(categorical[:2]), None if numeric is None else torch.from_numpy(numeric[:2]))
        with tempfile.TemporaryDirectory(prefix="lightning-afm-onnx-") as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter warns about its own internals
            path, _ = formats.write(module, "onnx", Path(folder), *example)
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(threads or torch.get_num_threads())
            options.inter_op_num_threads = 1  # one graph at a time: a second pool would only wait
            # the session reads the whole file now: the folder can go
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._names = [i.name for i in self.session.get_inputs()]
        self.check = verify(lambda c, n: self(c, n).astype(np.float64), eager_probabilities(module, categorical, numeric),
                            categorical, numeric, f"{CHECK_ROWS} random ids within the model's vocabularies")
        if not self.check.passed:
            raise ServeError(f"runtime='onnx': ONNX Runtime differs from eager PyTorch by max |Δp| = "
                             f"{self.check.max_abs_diff:.3g} (tolerance {DEFAULT_TOLERANCE:g}) on {CHECK_ROWS} random "
                             "rows; serve with runtime='torchscript' instead")

    def __call__(self, categorical: np.ndarray, numeric: np.ndarray) -> np.ndarray:
        feed = {self._names[0]: categorical}
        if self.num_numeric:
            feed[self._names[1]] = numeric
        return self.session.run(None, feed)[0].reshape(-1)
