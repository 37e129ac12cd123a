"""``Predictor``: load a run once, then score raw rows, encoded ids or whole files.

Small enough for a web handler: loading reads the checkpoint once (model and encoder); each call
encodes the rows (:class:`~lightning_afm.data.encoder.Encoder`) and runs the model under
``torch.inference_mode()`` in batches. No Lightning Trainer is involved.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from lightning_afm.data.encoder import ENCODER_DIR, ENCODER_FILE, EncodedRows, Encoder, find_checkpoint, no_encoder_message
from lightning_afm.data.readers import BadRows

from .onnx_runtime import OnnxRunner, optional_onnx_runner
from .runtime import (AUTO_ONNX_MAX_ROWS, RUNTIMES, ServeError, auto_onnx_max_rows, inference_module,
                      large_request_module, load_model, runs_native_kernels)

OUTPUT_FORMATS = ("csv", "parquet")


def _run_encoder(path: Path, checkpoint_path: Path) -> Encoder | None:
    """The encoder folder of the run a checkpoint belongs to (``<run>/encoder``), if any."""
    for folder in (path, checkpoint_path.parent, checkpoint_path.parent.parent):
        if (folder / ENCODER_DIR / ENCODER_FILE).is_file():
            return Encoder.load(folder / ENCODER_DIR)
    return None


def _verified_onnx(model: nn.Module, folders: list, path: Path, checkpoint_path: Path) -> Path | None:
    """A verified ONNX export of ``model``'s weights in ``folders``, the checkpoint's run folder (one
    with ``summary.json`` or ``.hydra/``; a checkpoint elsewhere has none) or their subfolders; None
    without one."""
    from lightning_afm.export.cli import run_folder
    from lightning_afm.export.manifest import weights_sha256
    from lightning_afm.export.reuse import find_verified_onnx

    run = run_folder(path, checkpoint_path)
    found = find_verified_onnx([*folders, *([run] if run is not None else [])], lambda: weights_sha256(model))
    return None if found is None else found[0]


def output_format(path: str | Path, file_format: str | None = None) -> str:
    """``"csv"`` or ``"parquet"``: as given, else by the output's suffix (``.parquet``/``.pq``; anything else: CSV)."""
    fmt = file_format or ("parquet" if str(path).lower().endswith((".parquet", ".pq")) else "csv")
    if fmt not in OUTPUT_FORMATS:
        raise ServeError(f"output format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    return fmt


class _Writer:
    """Streams tables of predictions into a CSV (``.gz`` etc. compressed by suffix) or a Parquet file."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt, self._writer, self._sink = path, fmt, None, None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                self._writer = pq.ParquetWriter(str(self.path), table.schema)
            else:
                import pyarrow.csv as pacsv

                self._sink = pa.output_stream(str(self.path), compression="detect")
                self._writer = pacsv.CSVWriter(self._sink, table.schema)
        self._writer.write_table(table)

    def close(self, schema: pa.Schema) -> None:
        if self._writer is None:  # no rows: still a valid file with the header
            self.write(schema.empty_table())
        self._writer.close()
        if self._sink is not None:
            self._sink.close()


class Predictor:
    """A model in inference mode and the encoder of its training data.

    Example (a web handler loads it once, then calls it per request)::

        predictor = Predictor.load("outputs/2024-06-01/12-00-00")   # run folder or .ckpt
        p = predictor.predict(frame)          # float32 [n], click probabilities

    Args:
        model: a CTR model (``forward(categorical [B, F], numeric [B, N]) -> logits [B]``).
        encoder: the encoder of its training data; ``None``: only :meth:`predict_encoded` works.
        batch_size: rows per forward pass (bounds memory, whatever the request size).
        device: where the model runs.
        runtime: ``"auto"`` (default: per call, ONNX Runtime for requests of up to
            :data:`~.runtime.AUTO_ONNX_MAX_ROWS` rows and TorchScript above, the faster of each in
            ``benchmarks/bench_serving.py``, or eager PyTorch above where the inference form runs a
            compiled kernel of ours (:func:`~.runtime.large_request_module`: AutoInt), there above
            :data:`~.runtime.AUTO_NATIVE_ONNX_MAX_ROWS` rows on one thread; that alone
            without the ``serve`` extra, on a GPU, or for a model ONNX cannot take), ``"torchscript"`` (the inference layer compiled),
            ``"eager"`` (see :func:`~.runtime.inference_module`) or ``"onnx"`` (exported and checked
            at load, run by ONNX Runtime on the CPU; :class:`~.onnx_runtime.OnnxRunner`).
        onnx_artifact: for ``"onnx"`` and ``"auto"``, a verified ONNX export of these weights to open
            (and check) instead of exporting at load; :meth:`load` finds one by its manifest.
    """

    def __init__(self, model: nn.Module, encoder: Encoder | None = None, batch_size: int = 8192, device: str | torch.device = "cpu",
                 source: str = "the model", runtime: str = "auto", onnx_artifact: Path | None = None) -> None:
        if int(batch_size) < 1:
            raise ServeError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        if runtime == "onnx" and self.device.type != "cpu":
            raise ServeError(f"runtime='onnx' runs on the CPU (ONNX Runtime's CPU provider), not {self.device}")
        # moved only when its weights are elsewhere: .to() also walks metric states, which a model
        # built on the meta device (the benchmarks' variants) keeps there
        weights = next(iter(model.parameters()), None)
        self.model = model if weights is not None and weights.device == self.device else model.to(self.device)
        if runtime not in RUNTIMES:
            raise ServeError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        #: ONNX Runtime's runner (numpy in, probabilities out) and the most rows a call sends to it
        self.onnx_runner: OnnxRunner | None = None
        self._onnx_max_rows = 0
        if runtime == "onnx":
            self.model.eval().requires_grad_(False)
            self.onnx_runner, self._onnx_max_rows = OnnxRunner(self.model, artifact=onnx_artifact), sys.maxsize
            self.runner = self.onnx_runner
        else:  # after the move: it shares the model's weights
            self.runner = large_request_module(self.model) if runtime == "auto" else inference_module(self.model, runtime)
        if runtime == "auto" and self.device.type == "cpu":
            self.onnx_runner = optional_onnx_runner(self.model, onnx_artifact)
            self._onnx_max_rows = AUTO_ONNX_MAX_ROWS if self.onnx_runner is not None else 0
        #: whether large requests run a native kernel, which lowers auto's ONNX threshold on one thread
        self._native_large = runtime == "auto" and self._onnx_max_rows > 0 and runs_native_kernels(self.runner)
        self.runtime = runtime
        self.encoder = encoder
        self.batch_size = int(batch_size)
        self._source = source
        self._moves = self.device.type != "cpu"  # inputs are made on the CPU
        # the input widths the model takes (None: a user's module that does not say)
        self._fields = tuple(w if isinstance(w, int) else None
                             for w in (getattr(model, "num_fields", None), getattr(model, "num_numeric", None)))
        schema = getattr(model, "schema", None)
        if encoder is not None and schema is not None and encoder.schema.vocab_sizes != schema.vocab_sizes:
            raise ServeError(
                f"the encoder does not belong to this model: vocabulary sizes {encoder.schema.vocab_sizes[:5]}... "
                f"against the model's {schema.vocab_sizes[:5]}...; use the encoder of the run that trained it"
            )

    @classmethod
    def load(cls, path: str | Path, model_class: str | type | None = None, device: str = "cpu", batch_size: int = 8192,
             runtime: str = "auto", export: str | Path | None = None) -> "Predictor":
        """From a run folder (its ``last.ckpt``) or a checkpoint file; the encoder from the checkpoint, else
        from the run's ``encoder/`` folder. ``model_class`` for checkpoints of other LightningModules.

        For ONNX Runtime (``runtime="onnx"`` or ``"auto"`` on the CPU), a verified ONNX export of the
        same weights (``lightning-afm-export``'s ``out=``: its manifest's ``weights_sha256``) found in
        ``export``, in the run folder or in one of their subfolders is opened and checked instead of
        exporting the model again (:func:`lightning_afm.export.reuse.find_verified_onnx`); with none,
        the model is exported at load as before."""
        path = Path(path).expanduser()
        checkpoint_path = find_checkpoint(path)
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        encoder = Encoder.from_checkpoint(checkpoint) or _run_encoder(path, checkpoint_path)
        model = load_model(checkpoint, model_class)
        artifact = None
        if runtime in ("onnx", "auto") and torch.device(device).type == "cpu":
            artifact = _verified_onnx(model, [export] if export is not None else [], path, checkpoint_path)
        return cls(model, encoder, batch_size=batch_size, device=device, source=str(checkpoint_path), runtime=runtime,
                   onnx_artifact=artifact)

    def _need_encoder(self) -> Encoder:
        if self.encoder is None:
            raise ServeError(no_encoder_message(Path(self._source)))
        return self.encoder

    # -- scoring -------------------------------------------------------------------------------
    def predict_encoded(self, categorical: np.ndarray, numeric: np.ndarray | None = None) -> np.ndarray:
        """Probabilities ``float32 [n]`` of encoded rows: ids ``[n, F]`` (int), numbers ``[n, N]`` (scaled, float32)."""
        categorical = np.asarray(categorical)
        if numeric is None:
            numeric = np.zeros((len(categorical), 0), dtype=np.float32)
        else:
            numeric = np.asarray(numeric)
        self._check_shapes(categorical, numeric)
        if len(categorical) <= self.batch_size:  # one forward pass (every request of a web handler): no copy out
            return self._score(categorical, numeric)
        out = np.empty(len(categorical), dtype=np.float32)
        for start in range(0, len(categorical), self.batch_size):
            part = slice(start, start + self.batch_size)
            out[part] = self._score(categorical[part], numeric[part])
        return out

    def _check_shapes(self, categorical: np.ndarray, numeric: np.ndarray) -> None:
        """Rows the model can take, said in one sentence (the model's own error would name its internals)."""
        fields, numbers = self._fields
        if categorical.ndim != 2 or (fields is not None and categorical.shape[1] != fields):
            raise ServeError(f"categorical ids must be [rows, {fields or 'fields'}], got shape {categorical.shape}; "
                             "a single row is [1, fields] (categorical[None])")
        if numeric.ndim != 2 or len(numeric) != len(categorical) or (numbers is not None and numeric.shape[1] != numbers):
            raise ServeError(f"numeric values must be [{len(categorical)}, {numbers if numbers is not None else 'N'}] "
                             f"(one row per categorical row), got shape {numeric.shape}")

    def _score(self, categorical: np.ndarray, numeric: np.ndarray) -> np.ndarray:
        """One forward pass: ``[b, F]``, ``[b, N]`` -> ``float32 [b]``. ``from_numpy`` shares the arrays'
        memory (no copy when they are already contiguous int64 / float32); nothing moves on the CPU."""
        categorical = np.ascontiguousarray(categorical, dtype=np.int64)
        numeric = np.ascontiguousarray(numeric, dtype=np.float32)
        limit = self._onnx_max_rows
        if self._native_large:  # "auto" with AutoInt's compiled attention: read the thread count now
            limit = min(limit, auto_onnx_max_rows(native_large_requests=True))
        if len(categorical) <= limit:  # runtime="onnx", or "auto" on a small request
            return self.onnx_runner(categorical, numeric)
        cat, num = torch.from_numpy(categorical), torch.from_numpy(numeric)
        if self._moves:
            cat, num = cat.to(self.device), num.to(self.device)
        with torch.inference_mode():
            return torch.sigmoid(self.runner(cat, num)).float().cpu().numpy()

    def predict(self, rows: Any, on_bad_rows: str = "error") -> np.ndarray:
        """Probabilities ``float32 [n]`` of raw rows (anything :meth:`Encoder.encode` takes), one per input row.

        ``on_bad_rows="skip"``: a row with a bad value (or, in raw lines, the wrong number of columns)
        gets NaN instead of an error.
        """
        encoded = self._need_encoder().encode(rows, on_bad_rows=on_bad_rows)
        scores = self.predict_encoded(encoded.categorical, encoded.numeric)
        if not encoded.skipped:
            return scores
        out = np.full(len(encoded) + encoded.skipped, np.nan, dtype=np.float32)
        out[encoded.rows] = scores
        return out

    def predict_file(self, path: str | Path, output: str | Path, on_bad_rows: str = "error", chunk_rows: int = 65536,
                     file_format: str | None = None, progress: bool = True) -> dict[str, Any]:
        """Score a raw file chunk by chunk (bounded memory) into ``output`` (CSV or Parquet).

        Columns written: ``row`` (1-based data row of the input; skipped rows are absent), ``probability``,
        and ``label`` when the input has one. Returns ``{"rows", "skipped", "skipped_by_reason", "output"}``.
        """
        from tqdm.auto import tqdm

        encoder = self._need_encoder()
        output = Path(output).expanduser()
        fmt = output_format(output, file_format)
        source = encoder.file_source(path, chunk_rows=int(chunk_rows))
        bad_rows = BadRows()
        writer = _Writer(output, fmt)
        written = 0
        schema = None
        with tqdm(unit="rows", unit_scale=True, desc=f"scoring {Path(path).name}", disable=not progress, file=sys.stderr) as bar:
            chunks = source.chunks(on_bad_rows, bad_rows)
            try:
                for chunk in chunks:
                    encoded: EncodedRows = encoder.encode_chunk(chunk, source, on_bad_rows, bad_rows)
                    columns = {"row": pa.array(encoded.rows + 1),
                               "probability": pa.array(self.predict_encoded(encoded.categorical, encoded.numeric))}
                    if encoded.label is not None:
                        columns["label"] = pa.array(encoded.label)
                    table = pa.table(columns)
                    schema = table.schema
                    writer.write(table)
                    written += len(encoded)
                    bar.update(chunk.table.num_rows)
            finally:
                if hasattr(chunks, "close"):  # stop the reader thread after an error
                    chunks.close()
                writer.close(schema or pa.schema([("row", pa.int64()), ("probability", pa.float32())]))
        bad_rows.resolve(source)
        return {"rows": written, "skipped": bad_rows.total, "skipped_by_reason": dict(bad_rows.by_reason),
                "skipped_first": bad_rows.examples, "output": str(output)}
