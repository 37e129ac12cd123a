"""The encoder: raw rows -> the arrays a model reads, exactly as the training pipeline made them.

It is the training cache's preprocessing state, frozen: how the file is read (kind, delimiter,
columns), each field's vocabulary (the ``value`` column of the cache's ``vocab/<field>.arrow``),
the numeric fields' training minimum and maximum, and the log-bucket switch. It travels with the
model twice: as ``<run>/encoder/`` (``encoder.json`` + ``vocab/<field>.arrow``) and inside every
checkpoint, through the file DataModules' ``state_dict()`` (key :data:`CHECKPOINT_KEY`). The
format is described in ``docs/encoder-format.md``.

Encoding reuses the pipeline's own steps (:func:`.pipeline.validate_chunk`,
:func:`.pipeline.field_keys`, :func:`.numeric.fill_missing`, :func:`.numeric.minmax_scale`); only
the lookup differs: a frozen vocabulary where training grew one. A value the vocabulary lacks
(unseen, or rarer than ``min_count`` in training) gets the OOV id 0, as in training.

Synthetic data has no encoder: it is generated as ids and numbers, there are no raw rows to
encode; score such a model on encoded arrays.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataConfigError
from .keys import MISSING_BUCKET, GrowingDictionary, string_keys
from .numeric import fill_missing, minmax_scale
from .pipeline import field_keys, validate_chunk
from .readers import PARQUET_SUFFIXES, BadRows, CsvSource, ParquetSource, RawChunk, TableSource, TableSpec
from .schema import Schema
from .vocab import OOV_ID, load_vocab, vocab_path

ENCODER_FORMAT = "lightning-afm-encoder"
ENCODER_VERSION = 1
ENCODER_DIR = "encoder"
ENCODER_FILE = "encoder.json"
#: where a checkpoint holds the encoder: at the top level, or in a DataModule's state (Lightning
#: stores ``datamodule.state_dict()`` under the DataModule's class name)
CHECKPOINT_KEY = "lightning_afm_encoder"
ROWS_NAME = "<rows>"  # the "file" named in errors about rows passed in memory


class _Inline:
    """The pipeline's worker-pool interface, run inline: a request is small, threads would cost more."""

    @staticmethod
    def map(fn, items):
        return [fn(i) for i in items]


@dataclass
class EncodedRows:
    """Encoded rows: ``categorical`` int32 ``[n, F]``, ``numeric`` float32 ``[n, N]``, ``label`` float32
    ``[n]`` (``None`` without a label column), ``rows`` int64 ``[n]`` (each row's 0-based index among the
    input's data rows: skipped rows leave gaps) and ``skipped`` (rows skipped with ``on_bad_rows="skip"``)."""

    categorical: np.ndarray
    numeric: np.ndarray
    label: np.ndarray | None
    rows: np.ndarray
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.rows)


def _ipc_bytes(values: pa.Array) -> bytes:
    sink = pa.BufferOutputStream()
    table = pa.table({"value": values})
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _read_ipc(source) -> pa.Array:
    return pa.ipc.open_file(source).read_all().column("value").combine_chunks()


class _MemoryCsv(CsvSource):
    """Raw lines given in memory, read by the training reader (same parser, options and errors)."""

    def __init__(self, data: bytes, spec: TableSpec, **kwargs) -> None:
        super().__init__(ROWS_NAME, spec, **kwargs)
        self._data = pa.py_buffer(data)

    def _open(self) -> pa.NativeFile:
        return pa.BufferReader(self._data)

    _csv_input = _open

    def _byte_size(self) -> int:
        return self._data.size

    def _check_file(self) -> None:
        if not self._data.size:
            raise DataConfigError("no rows given: the input is empty")


class _MemoryTable(TableSource):
    """Rows given as an Arrow table (from pandas, a list of dicts, ...): one chunk; errors name the 1-based row."""

    kind = "rows"
    where = "row"

    def __init__(self, table: pa.Table, spec: TableSpec) -> None:
        super().__init__(ROWS_NAME, spec, max(table.num_rows, 1))
        self.table = table

    def check(self) -> None:
        self._check_columns(self.table.column_names)

    def count_rows(self, progress: bool = False) -> int:
        return self.table.num_rows

    def chunks(self, on_bad_rows: str, bad_rows: BadRows) -> Iterator[RawChunk]:
        records = np.arange(1, self.table.num_rows + 1, dtype=np.int64)
        return iter([RawChunk(self.table.select(list(self.spec.columns)), records, self)])


def _as_arrow(rows) -> pa.Table | None:
    """An Arrow table from a DataFrame, a RecordBatch or a list of dicts; ``None`` for raw text."""
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    if type(rows).__module__.split(".")[0] == "pandas":  # pandas is used only if the caller has it
        return pa.Table.from_pandas(rows, preserve_index=False)
    if isinstance(rows, (list, tuple)) and rows and all(isinstance(r, Mapping) for r in rows):
        return pa.Table.from_pylist(list(rows))
    return None


def _as_text(rows) -> bytes:
    """Raw lines as one byte string (a ``str``/``bytes`` of lines, or a list of lines)."""
    if isinstance(rows, bytes):
        return rows
    if isinstance(rows, str):
        return rows.encode()
    if isinstance(rows, (list, tuple)) and all(isinstance(r, (str, bytes)) for r in rows):
        lines = [r.decode() if isinstance(r, bytes) else r for r in rows]
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines).encode()
    raise TypeError(
        f"cannot encode rows of type {type(rows).__name__}: pass a pandas DataFrame, a pyarrow Table or "
        "RecordBatch, a list of dicts (column -> value), or raw lines (a str, bytes, or a list of str) "
        "in the training file's format"
    )


class Encoder:
    """The frozen preprocessing of one training run: raw rows in, model inputs out.

    Example:
        >>> enc = Encoder.load("outputs/2024-06-01/12-00-00")  # doctest: +SKIP
        >>> out = enc.encode(["0\\t1\\t...\\t68fd1e64\\t..."])  # Criteo lines  # doctest: +SKIP
        >>> out.categorical.shape, out.numeric.shape  # doctest: +SKIP
        ((1, 26), (1, 13))

    Args:
        meta: the ``encoder.json`` content (see ``docs/encoder-format.md``).
        vocabs: per field name, the kept values ``[V + 1]`` (row ``i`` is id ``i``; row 0, the OOV
            row, is null).
    """

    def __init__(self, meta: Mapping[str, Any], vocabs: Mapping[str, pa.Array]) -> None:
        if meta.get("format") != ENCODER_FORMAT:
            raise DataConfigError(f"not a lightning-afm encoder (format {meta.get('format')!r}, expected {ENCODER_FORMAT!r})")
        if int(meta.get("version", 0)) > ENCODER_VERSION:
            raise DataConfigError(
                f"this encoder has format version {meta['version']}, newer than this lightning-afm reads "
                f"({ENCODER_VERSION}): upgrade lightning-afm"
            )
        self.meta = dict(meta)
        self.schema = Schema.from_dict(meta["schema"])
        self.vocabs = {f["name"]: vocabs[f["name"]] for f in meta["fields"]}
        for f in meta["fields"]:
            if len(self.vocabs[f["name"]]) != f["vocab_size"]:
                raise DataConfigError(f"encoder field {f['name']!r}: {len(self.vocabs[f['name']])} vocabulary rows, "
                                      f"the schema says {f['vocab_size']}: the encoder is damaged")
        self._low = np.array([np.nan if v is None else v for v in meta["numeric_min"]], dtype=np.float64)
        self._high = np.array([np.nan if v is None else v for v in meta["numeric_max"]], dtype=np.float64)
        self._lookups: list[GrowingDictionary] | None = None

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_cache(cls, path: str | Path) -> "Encoder":
        """The encoder of an encoded cache directory (:func:`.pipeline.preprocess`'s output)."""
        path = Path(path)
        schema = Schema.load(path / "schema.json")
        stats = json.loads((path / "stats.json").read_text())
        ident, extra = stats["source"], schema.extra
        categorical, numeric = list(ident["categorical"]), list(ident["numeric"])
        fields = []
        for i, f in enumerate(schema.categorical):
            bucket = i >= len(categorical)
            column = numeric[i - len(categorical)] if bucket else categorical[i]
            fields.append({"name": f.name, "column": column, "kind": "log_bucket" if bucket else "categorical",
                           "vocab_size": int(f.vocab_size), "vocab": f"vocab/{f.name}.arrow"})
        meta = {
            "format": ENCODER_FORMAT,
            "version": ENCODER_VERSION,
            "source": {"kind": ident["kind"], "sep": ident.get("sep", ","), "quote_char": ident.get("quote_char", '"'),
                       "column_names": ident.get("column_names")},
            "label": ident["label"],
            "categorical": categorical,
            "numeric": numeric,
            "integer_numeric": bool(ident.get("integer_numeric", False)),
            "log_buckets": bool(extra.get("log_buckets", False)),
            "min_count": int(extra.get("min_count", 1)),
            "oov_id": OOV_ID,
            "numeric_min": list(extra.get("numeric_min", [])),
            "numeric_max": list(extra.get("numeric_max", [])),
            "fields": fields,
            "schema": {k: v for k, v in schema.to_dict().items() if k != "extra"},
            "trained_on": {"path": ident.get("path"), "cache_key": extra.get("cache_key")},
        }
        vocabs = {f["name"]: load_vocab(vocab_path(path, f["name"])).column("value").combine_chunks() for f in fields}
        return cls(meta, vocabs)

    def to_state(self) -> dict[str, Any]:
        """Plain types for a checkpoint (``torch.load(weights_only=True)`` reads them): the JSON and Arrow IPC bytes."""
        return {"meta": json.loads(json.dumps(self.meta)), "vocab": {n: _ipc_bytes(v) for n, v in self.vocabs.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Encoder":
        return cls(state["meta"], {n: _read_ipc(pa.BufferReader(b)) for n, b in state["vocab"].items()})

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> "Encoder | None":
        """The encoder inside a loaded checkpoint dict (top level or a DataModule's state), or ``None``."""
        if CHECKPOINT_KEY in checkpoint:
            return cls.from_state(checkpoint[CHECKPOINT_KEY])
        for value in checkpoint.values():
            if isinstance(value, Mapping) and CHECKPOINT_KEY in value:
                return cls.from_state(value[CHECKPOINT_KEY])
        return None

    def save(self, directory: str | Path) -> Path:
        """Write ``encoder.json`` and ``vocab/<field>.arrow`` into ``directory`` (atomically: a temporary
        folder renamed into place). Returns ``directory``."""
        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
        (tmp / "vocab").mkdir(parents=True)
        try:
            for f in self.meta["fields"]:
                (tmp / f["vocab"]).write_bytes(_ipc_bytes(self.vocabs[f["name"]]))
            (tmp / ENCODER_FILE).write_text(json.dumps(self.meta, indent=2))
            if directory.exists():
                shutil.rmtree(directory)
            os.rename(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, path: str | Path) -> "Encoder":
        """From a run folder (``<run>/encoder/``, else its checkpoint), an encoder folder or a checkpoint file."""
        path = Path(path).expanduser()
        for folder in (path, path / ENCODER_DIR):
            if (folder / ENCODER_FILE).is_file():
                meta = json.loads((folder / ENCODER_FILE).read_text())
                vocabs = {f["name"]: _read_ipc(pa.memory_map(str(folder / f["vocab"]))) for f in meta["fields"]}
                return cls(meta, vocabs)
        checkpoint = find_checkpoint(path)
        import torch  # only a checkpoint needs it

        encoder = cls.from_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=True))
        if encoder is None:
            raise DataConfigError(no_encoder_message(checkpoint))
        return encoder

    # -- reading -----------------------------------------------------------------------------
    def spec(self, with_label: bool) -> TableSpec:
        meta = self.meta
        return TableSpec(meta["label"] if with_label else None, tuple(meta["categorical"]), tuple(meta["numeric"]),
                         integer_numeric=meta["integer_numeric"])

    def file_source(self, path: str | Path, chunk_rows: int = 1 << 16) -> TableSource:
        """A reader of ``path`` (the training file's format, or Parquet; ``.gz`` etc. decompressed), label optional."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataConfigError(f"input not found: {path}")
        if str(path).lower().endswith(PARQUET_SUFFIXES):
            import pyarrow.parquet as pq

            names = pq.ParquetFile(path).schema_arrow.names
            source = ParquetSource(path, self.spec(self.meta["label"] in names), chunk_rows=chunk_rows)
        else:
            probe = CsvSource(path, self.spec(True), **self._csv_options(None))
            source = self._csv_source(lambda spec, **kw: CsvSource(path, spec, chunk_rows=chunk_rows, **kw), probe._first_lines(1))
        source.check()
        return source

    def _csv_options(self, column_names) -> dict[str, Any]:
        src = self.meta["source"]
        return {"sep": src["sep"] or ",", "quote_char": src["quote_char"], "column_names": column_names, "kind": src["kind"]}

    def _csv_source(self, make, first_lines: list[str]) -> CsvSource:
        """A CSV reader with the label column or without it, decided by the first line (header, or field count)."""
        import csv

        label = self.meta["label"]
        names = self.meta["source"].get("column_names")
        sep, quote = self.meta["source"]["sep"] or ",", self.meta["source"]["quote_char"]
        first = next(csv.reader(io.StringIO(first_lines[0]), delimiter=sep, quotechar=quote or '"',
                                quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE)) if first_lines else []
        if names is None:  # a header row names the columns
            return make(self.spec(label in first), **self._csv_options(None))
        unlabelled = [c for c in names if c != label]
        with_label = len(first) != len(unlabelled)  # else the wrong width is reported by the reader, for line 1
        return make(self.spec(with_label), **self._csv_options(names if with_label else unlabelled))

    # -- encoding ----------------------------------------------------------------------------
    def _vocab_keys(self, field: Mapping[str, Any]) -> np.ndarray:
        """The keys (:mod:`.keys`) of a field's kept values, in id order ``[V]`` (the OOV row left out)."""
        values = self.vocabs[field["name"]].slice(1)
        if field["kind"] == "log_bucket":  # int64 keys written as text, "" for the missing bucket
            text = values.cast(pa.string())
            missing = pc.equal(text, "").to_numpy(zero_copy_only=False)
            numbers = pc.if_else(pa.array(missing), "0", text).cast(pa.int64()).to_numpy(zero_copy_only=False)
            return np.where(missing, MISSING_BUCKET, numbers).astype(np.int64)
        return string_keys(values)

    def _lookup(self) -> list[GrowingDictionary]:
        if self._lookups is None:
            lookups = []
            for field in self.meta["fields"]:
                d = GrowingDictionary()
                keys = self._vocab_keys(field)
                if len(keys):
                    d.ids_for(keys)  # distinct keys in id order: dictionary id i is vocabulary id i + 1
                lookups.append(d)
            self._lookups = lookups
        return self._lookups

    def encode_chunk(self, chunk: RawChunk, source: TableSource, on_bad_rows: str, bad_rows: BadRows) -> EncodedRows:
        """Encode one chunk of a reader of this encoder's spec (see :meth:`file_source`)."""
        spec = source.spec
        numeric = np.empty((chunk.table.num_rows, len(spec.numeric)), dtype=np.float64)
        skipped_before = bad_rows.total
        label, numeric, keep = validate_chunk(chunk, source, on_bad_rows, bad_rows, _Inline(), numeric)
        table = chunk.table.select(list(spec.categorical))
        rows = chunk.data_index()
        if keep is not None:
            label = label[keep] if label is not None else None
            numeric, rows, table = numeric[keep], rows[keep], table.filter(keep)
        ids = np.zeros((len(rows), len(self.meta["fields"])), dtype=np.int32)
        for f, lookup in enumerate(self._lookup()):
            found = field_keys(table, numeric, f)  # before the fill: log buckets read NaN as missing
            if found is not None:
                keys, indices = found
                ids[:, f] = np.take(lookup.find(keys, missing=OOV_ID - 1) + 1, indices)
        scaled = minmax_scale(fill_missing(numeric), self._low, self._high) if len(spec.numeric) else numeric.astype(np.float32)
        return EncodedRows(ids, scaled, label, rows, bad_rows.total - skipped_before)

    def encode(self, rows, on_bad_rows: str = "error") -> EncodedRows:
        """Encode rows given in memory: a pandas DataFrame, a pyarrow Table/RecordBatch, a list of dicts, or
        raw lines in the training file's format (Criteo: tab-separated without header; CSV and Avazu: the
        header line first). The label column may be absent. Bad rows raise
        :class:`MalformedRowError` naming the row (line) and column, or are skipped and counted
        (``on_bad_rows="skip"``; :attr:`EncodedRows.rows` says which rows remain)."""
        table = _as_arrow(rows)
        if table is not None:
            source: TableSource = _MemoryTable(table, self.spec(self.meta["label"] in table.column_names))
        else:
            data = _as_text(rows)
            first = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
            source = self._csv_source(lambda spec, **kw: _MemoryCsv(data, spec, **kw), [first] if first else [])
        source.check()
        bad_rows = BadRows()
        parts = [self.encode_chunk(c, source, on_bad_rows, bad_rows) for c in source.chunks(on_bad_rows, bad_rows)]
        return concat_encoded(parts, self.schema, bad_rows.total)


def concat_encoded(parts: list[EncodedRows], schema: Schema, skipped: int) -> EncodedRows:
    """Chunks of encoded rows as one (empty arrays of the schema's widths when there are none)."""
    if not parts:
        return EncodedRows(np.zeros((0, schema.num_categorical), np.int32), np.zeros((0, schema.num_numeric), np.float32),
                           None, np.zeros(0, np.int64), skipped)
    label = np.concatenate([p.label for p in parts]) if parts[0].label is not None else None
    return EncodedRows(np.concatenate([p.categorical for p in parts]), np.concatenate([p.numeric for p in parts]), label,
                       np.concatenate([p.rows for p in parts]), skipped)


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint of a run folder (``last.ckpt``, else ``checkpoints/last.ckpt``) or the file itself."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    for candidate in (path / "last.ckpt", path / "checkpoints" / "last.ckpt"):
        if candidate.is_file():
            return candidate
    if not path.exists():
        raise DataConfigError(f"{path} does not exist: give a run folder (outputs/...) or a checkpoint file (.ckpt)")
    raise DataConfigError(f"{path} holds no last.ckpt nor checkpoints/last.ckpt: give a run folder or a checkpoint file")


def no_encoder_message(checkpoint: Path) -> str:
    return (
        f"{checkpoint} carries no encoder, so raw rows cannot be encoded for it. Runs of lightning-afm on "
        "data=criteo/avazu/csv write one (<run>/encoder/ and inside every checkpoint); a run on synthetic data "
        "has none (its rows are generated as ids). For your own Trainer, use lightning-afm's file DataModule "
        "(CriteoDataModule, AvazuDataModule, CSVDataModule: its state_dict() puts the encoder in each "
        "checkpoint), or save Encoder.from_cache(<cache folder>).save(<run>/encoder). Without an encoder, "
        "score already-encoded ids with Predictor.predict_encoded(categorical, numeric)"
    )


__all__ = ["CHECKPOINT_KEY", "ENCODER_DIR", "ENCODER_FORMAT", "ENCODER_VERSION", "EncodedRows", "Encoder",
           "concat_encoded", "find_checkpoint", "no_encoder_message"]
