"""Streaming readers for raw CTR tables: Criteo ``train.txt``, Avazu ``train.csv``, any CSV or Parquet.

A reader checks the file and its columns before any work (:meth:`check`), counts
its rows (for the split and the progress bar) and yields :class:`RawChunk` s of
a few hundred thousand rows, so memory stays bounded whatever the file size.
CSV label and numeric columns arrive as strings (one bad value must not abort a
whole Arrow block; :mod:`.convert` validates them); categorical columns are
strings too, so ``"007"`` and ``"7"`` stay two values.

Rows with the wrong number of columns are caught by Arrow's parser: with
``on_bad_rows="error"`` the first one raises :class:`MalformedRowError` naming
its line, with ``"skip"`` they are counted in :class:`BadRows`.

Rows are identified by their *record number*: the 1-based count of records in
the file as the parser sees them (header included, blank lines not, a quoted
value spanning lines still one record), which is what Arrow reports for an
invalid row. The split is drawn from it, so skipping a row never moves another
row's number. Error messages translate record numbers into physical line
numbers (:meth:`TableSource.lines_of`), which differ after a blank line or a
quoted newline.
"""

from __future__ import annotations

import csv
import functools
import io
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .cache import content_fingerprint
from .errors import DataConfigError, MalformedRowError, check_on_bad_rows

CRITEO_LABEL = "label"
CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = (CRITEO_LABEL,) + CRITEO_NUMERIC + CRITEO_CATEGORICAL

AVAZU_LABEL = "click"
AVAZU_CATEGORICAL = (
    "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)  # fmt: skip

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


@functools.lru_cache(maxsize=1)
def memory_pool() -> pa.MemoryPool:
    """The Arrow memory pool of the readers and encoders: jemalloc where available.

    Measured here: with the default mimalloc pool, every parsed chunk's memory
    is handed back to the OS and zeroed again on the next one (1.4 s of kernel
    time per 1M Criteo rows); jemalloc keeps it for reuse (0.35 s). Only this
    package's own reads use it; the process default pool is left alone.
    """
    try:
        return pa.jemalloc_memory_pool()
    except (NotImplementedError, pa.ArrowNotImplementedError):
        return pa.default_memory_pool()


@dataclass(frozen=True)
class TableSpec:
    """Which columns of a table are the label, the categorical and the numeric fields.

    ``integer_numeric`` makes numeric fields integer-only (Criteo's I1..I13). ``label=None``
    reads rows without a label (rows to score, :mod:`.encoder`); training refuses it.
    """

    label: str | None
    categorical: tuple[str, ...]
    numeric: tuple[str, ...] = ()
    integer_numeric: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "categorical", tuple(str(c) for c in self.categorical))
        object.__setattr__(self, "numeric", tuple(str(c) for c in self.numeric))
        if self.label is not None and not self.label:
            raise DataConfigError("a label column is required (e.g. label=click)")
        if not self.categorical and not self.numeric:
            raise DataConfigError("name at least one categorical or numeric column")
        names = list(self.categorical) + list(self.numeric)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataConfigError(f"columns named more than once in categorical/numeric: {dup}")
        if self.label in names:
            raise DataConfigError(f"the label column {self.label!r} is also listed as a feature")

    @property
    def columns(self) -> tuple[str, ...]:
        """All columns read, in the order of every chunk's table: label (if any), numeric, categorical."""
        return ((self.label,) if self.label is not None else ()) + self.numeric + self.categorical


@dataclass
class RawChunk:
    """Consecutive rows of the source, as an Arrow table with ``spec.columns``.

    ``records`` (``int64 [n]``) holds each row's 1-based record number in the
    file (header included; for Parquet the 1-based row), ``data_records`` the
    number of records before the first data row (1 with a header row, else 0),
    so ``records - data_records - 1`` is the 0-based index the split is drawn
    from. ``line_of(i)`` gives the physical file line of chunk row ``i``.
    """

    table: pa.Table
    records: np.ndarray
    source: "TableSource"

    @property
    def start_row(self) -> int:
        """0-based data index of the first row (rows the parser skipped before it included)."""
        return int(self.records[0]) - self.source.header_lines - 1 if len(self.records) else 0

    def data_index(self) -> np.ndarray:
        """``int64 [n]``: 0-based index of each row among the file's data records."""
        return self.records - self.source.header_lines - 1

    def line_of(self, i: int) -> int:
        return int(self.source.lines_of(self.records[i : i + 1])[0])


class BadRows:
    """Skipped rows: a count per reason and the first few of them by position (for the log and the report).

    Thread-safe: the reader thread adds rows of the wrong width while the
    encoder adds rows with bad values. Rows are noted by record number and
    turned into file lines once, by :meth:`resolve`.
    """

    def __init__(self, max_examples: int = 10) -> None:
        self.max_examples = int(max_examples)
        self.by_reason: dict[str, int] = {}
        self._first: list[tuple[int, str | None, str]] = []  # (record, column, reason), the earliest records
        self._lines: list[int] | None = None
        self._where = "line"
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(self, reason: str, count: int = 1, records: Sequence[int] = (), column: str | None = None, detail: str | None = None) -> None:
        """Count ``count`` rows skipped for ``reason``; ``records`` are (some of) their record numbers."""
        with self._lock:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + int(count)
            for r in list(records)[: self.max_examples]:
                self._first.append((int(r), column, detail or reason))
            # keep the earliest rows: the reader thread may run ahead of the encoder
            self._first = sorted(self._first)[: self.max_examples]
            self._lines = None

    def resolve(self, source: "TableSource") -> None:
        """Translate the noted record numbers into the file's line numbers (one scan of the file at most)."""
        with self._lock:
            self._where = source.where
            records = np.array([r for r, _, _ in self._first], dtype=np.int64)
            self._lines = source.lines_of(records).tolist() if len(records) else []

    def first(self) -> list[dict]:
        """The earliest skipped rows: ``[{"line": int, "column": str | None, "reason": str}, ...]``."""
        lines = self._lines if self._lines is not None else [r for r, _, _ in self._first]
        return [{self._where: int(line), "column": col, "reason": why} for line, (_, col, why) in zip(lines, self._first)]

    @property
    def examples(self) -> list[str]:
        """The same rows as one line of text each (``"line 57: expected 40 columns, found 10"``)."""
        out = []
        for row in self.first():
            col = f", column {row['column']!r}" if row["column"] is not None else ""
            out.append(f"{self._where} {row[self._where]}{col}: {row['reason']}")
        return out

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.by_reason), "examples": self.examples, "first": self.first()}


class prefetch:  # noqa: N801 - used like a function
    """Run ``make_iterator()`` in a background thread, up to ``depth`` items ahead; iterate the results.

    Arrow parses without the GIL, so parsing the next chunk overlaps with
    encoding this one. The thread starts at once (the caller may count rows
    meanwhile). Exceptions surface in the consumer; :meth:`close` (also on
    garbage collection) stops the thread.
    """

    _DONE = object()

    def __init__(self, make_iterator: Callable[[], Iterator], depth: int = 2) -> None:
        self._items: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._worker = threading.Thread(target=self._produce, args=(make_iterator,), name="lightning-afm-reader", daemon=True)
        self._worker.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, make_iterator) -> None:
        try:
            for item in make_iterator():
                if not self._put((None, item)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put((exc, None))
        self._put((None, self._DONE))

    def __iter__(self) -> "prefetch":
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        exc, item = self._items.get()
        if exc is not None:
            self.close()
            raise exc
        if item is self._DONE:
            self.close()
            raise StopIteration
        return item

    def close(self) -> None:
        self._finished = True
        self._stop.set()
        self._worker.join()

    def __del__(self) -> None:
        self._stop.set()


def _describe_columns(names: Sequence[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:60]) + (f", ... ({len(names)} in all)" if len(names) > 60 else "")
    return f"the file has the columns: {shown}"


class TableSource:
    """Common interface of the readers."""

    kind: str = "table"
    where: str = "line"  # how :class:`MalformedRowError` locates a row
    header_lines: int = 0  # records before the first data row

    def __init__(self, path: str | Path, spec: TableSpec, chunk_rows: int = 1 << 18) -> None:
        self.path = Path(path).expanduser()
        self.spec = spec
        self.chunk_rows = int(chunk_rows)

    def identity(self) -> dict:
        """What the cache key depends on: the file (path, size, mtime, sampled content) and how it is read."""
        st = self.path.stat()
        return {
            "kind": self.kind,
            "path": str(self.path.resolve()),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "fingerprint": content_fingerprint(self.path),  # reads 16 MiB at most
            "label": self.spec.label,
            "categorical": list(self.spec.categorical),
            "numeric": list(self.spec.numeric),
            "integer_numeric": self.spec.integer_numeric,
        }

    def _check_file(self) -> None:
        if not self.path.exists():
            raise DataConfigError(f"{self.kind} input not found: {self.path} (set data.path to the file)")
        if not self.path.is_file():
            raise DataConfigError(f"{self.kind} input is not a file: {self.path}")
        if self.path.stat().st_size == 0:
            raise DataConfigError(f"{self.path} is empty: there are no rows to read")

    def _check_columns(self, available: Sequence[str], where: str = "") -> None:
        """Raise when a configured column is not among ``available``; ``where`` says where those
        names came from (e.g. "line 1, the header row"), so the error points at the line to fix."""
        have = set(available)
        at = f" ({where})" if where else ""
        if self.spec.label is not None and self.spec.label not in have:
            raise DataConfigError(
                f"{self.path}: label column {self.spec.label!r} not found{at}; {_describe_columns(available)}"
            )
        missing = [c for c in self.spec.categorical + self.spec.numeric if c not in have]
        if missing:
            raise DataConfigError(
                f"{self.path}: configured columns not found: {missing}{at}; {_describe_columns(available)}"
            )

    def lines_of(self, records: np.ndarray) -> np.ndarray:
        """Where records ``int64 [k]`` (1-based record numbers) lie in the file: ``int64 [k]`` lines (or rows)."""
        return np.asarray(records, dtype=np.int64)

    def check(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def count_rows(self, progress: bool = False) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def chunks(self, on_bad_rows: str, bad_rows: BadRows) -> Iterator[RawChunk]:  # pragma: no cover - abstract
        raise NotImplementedError


class _LineScan:
    """Counts line ends, blank lines and quote characters of a byte stream fed block by block.

    One vectorised compare per block finds the LFs; blank lines (LF LF, or
    LF CR LF) come from the gaps between consecutive LFs, so a run of them
    counts exactly and no second pass over the bytes is needed. Quote
    characters are only looked for until the first one is found.
    """

    def __init__(self, quote: bytes | None) -> None:
        self.newlines = 0
        self.blank_lines = 0
        self.quotes = 0
        self.last_byte = 10  # LF: as if a line ended just before the file, so an empty first line is blank
        self._quote = quote[0] if quote else None
        self._since_lf = 0  # bytes from the last LF (exclusive) to the end of the previous block

    def feed(self, view) -> None:
        data = np.frombuffer(view, dtype=np.uint8)
        if not len(data):
            return
        at = np.flatnonzero(data == 10)
        self.newlines += len(at)
        if len(at):
            # gap = bytes between an LF and the previous one, LF included: 1 for LF LF, 2 for LF x LF
            previous = np.concatenate([[-1 - self._since_lf], at[:-1]])
            gap = at - previous
            self.blank_lines += int(np.count_nonzero(gap == 1))
            two = at[gap == 2]  # LF x LF: blank when x is CR (the byte before the LF)
            if len(two):
                before = np.where(two >= 1, data[np.maximum(two - 1, 0)], self.last_byte)
                self.blank_lines += int(np.count_nonzero(before == 13))
            self._since_lf = len(data) - 1 - int(at[-1])
        else:
            self._since_lf += len(data)
        if self._quote is not None and not self.quotes:
            self.quotes = int(np.count_nonzero(data == self._quote))
        self.last_byte = int(data[-1])


def _records_of(accepted: int, n: int, header_lines: int, skipped: list[int]) -> np.ndarray:
    """Record numbers ``int64 [n]`` of accepted rows ``accepted .. accepted + n - 1`` (0-based among accepted rows).

    The ``a``-th accepted row is the ``a``-th record after the header that is
    not in ``skipped`` (sorted record numbers of dropped rows). With
    ``t_j = skipped_j - j`` (non-decreasing) it is record
    ``first + a + #{j : t_j <= first + a}``, where ``first`` is the first data record.
    Skips noted beyond the chunk (the parser reads ahead) do not change the result.
    """
    first = header_lines + 1
    wanted = first + accepted + np.arange(n, dtype=np.int64)
    if not skipped:
        return wanted
    s = np.asarray([r for r in skipped[: len(skipped)] if r is not None], dtype=np.int64)  # a snapshot: the list grows
    return wanted + np.searchsorted(s - np.arange(len(s)), wanted, side="right")


class CsvSource(TableSource):
    """A delimited text file, with a header row or with ``column_names`` given.

    Args:
        path: the file.
        spec: label / categorical / numeric columns to read (others are skipped unparsed).
        sep: the delimiter (``"\\t"`` for Criteo).
        column_names: the names of all columns when the file has no header row.
        quote_char: ``'"'`` for CSV; ``None`` for formats that never quote (faster, and a
            stray quote stays a character).
        block_size: bytes Arrow parses at a time (4 MiB is fastest here: it stays in cache).
        chunk_rows: rows handed to the encoder at a time.
    """

    kind = "csv"

    def __init__(
        self,
        path: str | Path,
        spec: TableSpec,
        sep: str = ",",
        column_names: Sequence[str] | None = None,
        quote_char: str | None = '"',
        block_size: int = 4 << 20,
        chunk_rows: int = 1 << 18,
        kind: str | None = None,
    ) -> None:
        super().__init__(path, spec, chunk_rows)
        if not isinstance(sep, str) or len(sep) != 1:
            raise DataConfigError(f"sep must be a single character, got {sep!r}")
        self.sep = sep
        self.column_names = tuple(column_names) if column_names is not None else None
        self.quote_char = quote_char
        self.block_size = int(block_size)
        if kind is not None:
            self.kind = kind
        self.header_lines = 0 if self.column_names is not None else 1

    def identity(self) -> dict:
        d = super().identity()
        d.update(sep=self.sep, column_names=list(self.column_names) if self.column_names else None, quote_char=self.quote_char)
        return d

    def _open(self) -> pa.NativeFile:
        """The file's bytes, decompressed when the name says so (``.gz``, ``.bz2``, ``.zst``, ...)."""
        return pa.input_stream(str(self.path), compression="detect")

    def _csv_input(self):
        """What Arrow's CSV reader opens: the path (it decompresses by suffix); in-memory sources override it."""
        return self.path

    def _byte_size(self) -> int:
        """Bytes of the input as stored (the row count's progress bar)."""
        return self.path.stat().st_size

    def _first_lines(self, n: int) -> list[str]:
        lines: list[str] = []
        with self._open() as raw:
            text = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8-sig", errors="replace", newline="")
            for line in text:
                if line.strip("\r\n"):
                    lines.append(line.rstrip("\r\n"))
                if len(lines) >= n:
                    break
        return lines

    def _check_line_ends(self) -> None:
        """Refuse files whose lines end with a lone CR (classic Mac OS): rows would be miscounted.

        Arrow would split such rows, but the row count (the split) and every
        line number count LF line ends; a clear error beats a silent mismatch.
        """
        with self._open() as f:
            head = f.read(1 << 16)
        if b"\r" in head and b"\n" not in head:
            name = self.path.name
            raise DataConfigError(
                f"{self.path}: its lines end with a carriage return only (CR, old Mac style); this reader "
                f"needs LF or CRLF line ends. Convert the file, e.g. `tr '\\r' '\\n' < {name} > lf-{name}`, "
                "and point data.path at the converted file"
            )

    def check(self) -> None:
        self._check_file()
        self._check_line_ends()
        first = self._first_lines(2)
        if self.column_names is not None:
            if not first:
                raise DataConfigError(f"{self.path} has no data rows")
            found = len(next(csv.reader(io.StringIO(first[0]), delimiter=self.sep, quotechar=self.quote_char or '"', quoting=csv.QUOTE_MINIMAL if self.quote_char else csv.QUOTE_NONE)))
            if found != len(self.column_names):
                raise DataConfigError(
                    f"{self.path}: expected {len(self.column_names)} columns separated by {self.sep!r} "
                    f"({self.column_names[0]}, ..., {self.column_names[-1]}), the first line has {found}"
                )
            self._check_columns(self.column_names, "data.column_names")
        else:
            if not first:
                raise DataConfigError(f"{self.path} is empty: expected a header row and data rows")
            header = next(csv.reader(io.StringIO(first[0]), delimiter=self.sep, quotechar=self.quote_char or '"'))
            self._check_columns(header, "line 1, the header row")
            if len(first) < 2:
                raise DataConfigError(f"{self.path} has a header row but no data rows")

    def count_rows(self, progress: bool = False) -> int:
        """Data lines that are not blank: the data records, or an upper bound when quoted values span lines.

        Blank lines are left out as the parser skips them, so a blank line does
        not change the split of the other rows (it is drawn over this count).

        The same pass notes whether the file has blank lines or quote characters,
        which decide how record numbers map to line numbers (:meth:`lines_of`).
        """
        from tqdm.auto import tqdm

        size = self._byte_size()
        scan = _LineScan(self.quote_char.encode() if self.quote_char else None)
        buffer = bytearray(8 << 20)  # reused: no fresh memory per block
        with self._open() as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"counting rows of {self.path.name}", disable=not progress, leave=False) as bar:
            while True:
                got = f.readinto(buffer)
                if not got:
                    break
                scan.feed(memoryview(buffer)[:got])
                bar.update(min(got, max(size - bar.n, 0)))  # compressed input: the bar counts towards the file size
        lines = scan.newlines + (0 if scan.last_byte == 10 else 1)
        blank = scan.blank_lines
        # "quotes" only tells whether any quote character exists (the scan stops counting at the first block with one)
        self._layout = {"lines": lines, "blank_lines": blank, "quotes": scan.quotes}
        return max(lines - blank - self.header_lines, 0)

    @property
    def blank_lines(self) -> int | None:
        """Blank lines found by :meth:`count_rows` (the parser skips them), ``None`` before it ran."""
        layout = getattr(self, "_layout", None)
        return None if layout is None else layout["blank_lines"]

    def lines_of(self, records: np.ndarray) -> np.ndarray:
        """Physical lines ``int64 [k]`` of records ``int64 [k]`` (1-based, header included).

        A record is its line unless a blank line (skipped by the parser) or a
        quoted line break comes before it; only then is the file scanned again,
        up to the last record asked for.
        """
        records = np.asarray(records, dtype=np.int64)
        layout = getattr(self, "_layout", None)
        if layout is None:
            self.count_rows()
            layout = self._layout
        if not len(records) or (layout["blank_lines"] == 0 and layout["quotes"] == 0):
            return records.copy()
        return self._scan_record_lines(records)

    def _scan_record_lines(self, records: np.ndarray) -> np.ndarray:
        """The slow path of :meth:`lines_of`: parse with Python's csv module, which counts physical lines.

        Its dialect mirrors the Arrow parser's (delimiter, double-quoting, no
        escape character, blank lines skipped); a record whose first line can
        not be found (e.g. a field over the csv module's size limit) keeps its
        record number.
        """
        wanted = np.unique(records)
        found: dict[int, int] = {}
        quoting = {"quotechar": self.quote_char, "doublequote": True} if self.quote_char else {"quoting": csv.QUOTE_NONE}
        with self._open() as raw:
            text = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8-sig", errors="replace", newline="")
            reader = csv.reader(text, delimiter=self.sep, strict=False, **quoting)
            record, before, k = 0, 0, 0
            try:
                for row in reader:
                    if row:  # the csv module returns [] for a blank line, as the parser skips it
                        record += 1
                        while k < len(wanted) and wanted[k] == record:
                            found[record] = before + 1
                            k += 1
                        if k == len(wanted):
                            break
                    before = reader.line_num
            except csv.Error:
                pass
        return np.array([found.get(int(r), int(r)) for r in records], dtype=np.int64)

    def chunks(self, on_bad_rows: str, bad_rows: BadRows) -> Iterator[RawChunk]:
        check_on_bad_rows(on_bad_rows)
        skipped_records: list[int] = []  # record numbers of the rows the parser dropped, in file order
        wrong_width: list[pa.csv.InvalidRow] = []
        expected = len(self.column_names) if self.column_names else None
        path = self.path

        def on_invalid(row) -> str:
            if on_bad_rows == "error":
                wrong_width.append(row)
            else:
                # row.number is the record number (serial parsing keeps it known)
                skipped_records.append(row.number)
                bad_rows.add(
                    "wrong number of columns",
                    1,
                    records=[row.number],
                    detail=f"expected {row.expected_columns} columns, found {row.actual_columns}",
                )
            return "skip"

        columns = list(self.spec.columns)
        # Every column is read as bytes: binary skips Arrow's UTF-8 validation (~0.5 s per 1M Criteo
        # rows); numbers are cast from bytes as from text.
        column_types = {c: pa.binary() for c in columns}
        read_options = pacsv.ReadOptions(
            use_threads=False,  # the streaming reader is serial anyway; this keeps line numbers
            block_size=self.block_size,
            column_names=list(self.column_names) if self.column_names else None,
        )
        parse_options = pacsv.ParseOptions(
            delimiter=self.sep,
            quote_char=self.quote_char if self.quote_char else False,
            invalid_row_handler=on_invalid,
        )
        convert_options = pacsv.ConvertOptions(
            column_types=column_types,
            include_columns=columns,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        )

        def batches() -> Iterator[RawChunk]:
            reader = pacsv.open_csv(
                self._csv_input(), read_options=read_options, parse_options=parse_options, convert_options=convert_options, memory_pool=memory_pool()
            )
            pending: list[pa.RecordBatch] = []
            pending_rows = 0
            accepted = 0  # rows the parser accepted before `pending`

            def chunk() -> RawChunk:
                records = _records_of(accepted, pending_rows, self.header_lines, skipped_records)
                return RawChunk(pa.Table.from_batches(pending), records, self)

            def refuse(row) -> MalformedRowError:
                line = int(self.lines_of(np.array([row.number]))[0]) if row.number is not None else None
                return MalformedRowError(
                    path, line, None,
                    f"expected {row.expected_columns or expected} columns separated by {self.sep!r}, found {row.actual_columns}",
                )

            for batch in reader:
                if wrong_width:
                    raise refuse(wrong_width[0])
                if batch.num_rows:
                    pending.append(batch)
                    pending_rows += batch.num_rows
                if pending_rows >= self.chunk_rows:
                    yield chunk()
                    accepted += pending_rows
                    pending, pending_rows = [], 0
            if wrong_width:
                raise refuse(wrong_width[0])
            if pending:
                yield chunk()

        return prefetch(batches)


class ParquetSource(TableSource):
    """A Parquet file, read a row group slice at a time; errors name the 1-based row."""

    kind = "parquet"
    where = "row"

    def check(self) -> None:
        self._check_file()
        try:
            meta = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises several types for a non-Parquet file
            raise DataConfigError(f"{self.path} is not a readable Parquet file: {exc}") from exc
        self._check_columns(meta.schema_arrow.names, "the Parquet file's schema")
        if meta.metadata.num_rows == 0:
            raise DataConfigError(f"{self.path} has no rows")

    def count_rows(self, progress: bool = False) -> int:
        return int(pq.ParquetFile(self.path).metadata.num_rows)

    def chunks(self, on_bad_rows: str, bad_rows: BadRows) -> Iterator[RawChunk]:
        check_on_bad_rows(on_bad_rows)
        columns = list(self.spec.columns)

        def batches() -> Iterator[RawChunk]:
            start = 0
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=self.chunk_rows, columns=columns):
                if batch.num_rows:
                    records = start + 1 + np.arange(batch.num_rows, dtype=np.int64)
                    yield RawChunk(pa.Table.from_batches([batch]).select(columns), records, self)
                    start += batch.num_rows

        return prefetch(batches)


def criteo_source(path: str | Path, **kwargs) -> CsvSource:
    """Criteo ``train.txt``: tab-separated, no header, label, I1..I13 (integers), C1..C26."""
    spec = TableSpec(CRITEO_LABEL, CRITEO_CATEGORICAL, CRITEO_NUMERIC, integer_numeric=True)
    return CsvSource(path, spec, sep="\t", column_names=CRITEO_COLUMNS, quote_char=None, kind="criteo", **kwargs)


def avazu_source(path: str | Path, **kwargs) -> CsvSource:
    """Avazu ``train.csv``: header, label ``click``, the 22 categorical columns (``id`` is not read)."""
    spec = TableSpec(AVAZU_LABEL, AVAZU_CATEGORICAL, ())
    return CsvSource(path, spec, sep=",", quote_char='"', kind="avazu", **kwargs)


def table_source(
    path: str | Path,
    label: str,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    sep: str = ",",
    file_format: str | None = None,
    **kwargs,
) -> TableSource:
    """Any CTR table: a CSV (with header) or a Parquet file, by ``file_format`` or by suffix."""
    spec = TableSpec(str(label), tuple(categorical or ()), tuple(numeric or ()))
    fmt = file_format or ("parquet" if str(path).lower().endswith(PARQUET_SUFFIXES) else "csv")
    if fmt == "parquet":
        return ParquetSource(path, spec, **kwargs)
    if fmt == "csv":
        return CsvSource(path, spec, sep=sep, **kwargs)
    raise DataConfigError(f"file_format must be 'csv' or 'parquet', got {file_format!r}")
