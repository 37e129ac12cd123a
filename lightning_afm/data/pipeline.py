"""Raw table -> encoded cache, in one streaming pass plus a fix-up of the encoded rows.

A reader thread parses the next chunk while this one is encoded: labels and
numbers are validated, each row gets its split, every categorical value a
provisional id (first-seen order, :class:`GrowingDictionary`, one column per
worker thread), training occurrences are counted and the training min/max of
each numeric field tracked. The encoded rows are appended per split (held in
memory up to :data:`HELD_BYTES`, on disk beyond). Only at the end are the
vocabularies known (training counts, ``min_count``), so the fix-up maps
provisional ids to final ones (unseen or rare -> OOV 0) and min-max scales
the numbers, block by block, as each ``.npy`` is completed.

Memory: a few chunks, the dictionaries and at most ``HELD_BYTES`` of rows;
never the table. Measured with ``benchmarks/bench_preprocess.py``.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .cache import MemoryBudget, NpyAppender, atomic_directory, cache_key, cache_problem, default_cache_dir, write_json
from .convert import BEYOND_FLOAT32, BEYOND_FLOAT32_FIX, beyond_float32, display, parse_label, parse_numeric
from .errors import CacheError, DataConfigError, MalformedRowError, check_on_bad_rows
from .keys import MISSING_BUCKET, GrowingDictionary, fixed8_row_keys, keys_to_arrow, string_keys
from .numeric import RunningMinMax, fill_missing, log_bucket, minmax_scale
from .readers import BadRows, RawChunk, TableSource, memory_pool
from .schema import CategoricalField, Schema
from .split import SPLIT_NAMES, TRAIN, check_fractions, split_assignment
from .vocab import build_vocab, save_vocab, vocab_path

log = logging.getLogger(__name__)

BUCKET_SUFFIX = "_bucket"
# Encoded rows kept in memory until the fix-up pass, beyond which they go to disk and are
# rewritten in place: a 1M-row Criteo file (160 MB of rows) is written once, the full one streams.
HELD_BYTES = 256 << 20


@dataclass(frozen=True)
class EncodeOptions:
    """Everything that changes the encoded arrays (and so the cache key).

    Args:
        min_count: values seen fewer times in training map to OOV (1: full vocabularies, the paper).
        log_buckets: add one categorical field ``<name>_bucket`` per numeric field
            (``floor(log(x)^2)`` for ``x > 2``); the numeric fields stay.
        test_fraction, val_fraction, seed: the split (see :mod:`.split`).
        on_bad_rows: ``"error"`` (default) or ``"skip"`` (count and report).
    """

    min_count: int = 1
    log_buckets: bool = False
    test_fraction: float = 0.1
    val_fraction: float = 0.0
    seed: int = 2020
    on_bad_rows: str = "error"

    def __post_init__(self) -> None:
        if int(self.min_count) < 1:
            raise DataConfigError(f"min_count must be >= 1 (1 keeps every training value), got {self.min_count}")
        check_fractions(self.test_fraction, self.val_fraction)
        check_on_bad_rows(self.on_bad_rows)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(min_count=int(self.min_count), test_fraction=float(self.test_fraction), val_fraction=float(self.val_fraction), seed=int(self.seed))
        return d


@dataclass
class PreprocessResult:
    """Where the cache is, its schema, the build statistics, and whether it was reused."""

    path: Path
    schema: Schema
    stats: dict[str, Any]
    reused: bool

    def data_report(self) -> dict[str, Any]:
        """What happened to the input's rows, as plain JSON types (for a run's ``summary.json``).

        Read from the cache's ``stats.json``, so a reused cache reports the rows
        skipped when it was built. Keys: ``source`` (file), ``cache``,
        ``cache_reused``, ``rows_counted`` (data lines), ``rows_read`` (rows the
        parser accepted), ``rows_encoded``, ``split_rows`` (rows per split),
        ``blank_lines`` (ignored), ``rows_skipped`` and ``skipped``:
        ``{"total", "by_reason": {reason: count}, "first": [{"line" (or "row"), "column", "reason"}, ...]}``
        (the earliest skipped rows, at most 10).
        """
        stats = self.stats
        bad = stats.get("bad_rows", {})
        return {
            "source": stats.get("source", {}).get("path"),
            "cache": str(self.path),
            "cache_reused": bool(self.reused),
            "rows_counted": stats.get("rows_counted"),
            "rows_read": stats.get("rows_read"),
            "rows_encoded": stats.get("rows_encoded"),
            "split_rows": dict(stats.get("split_rows", {})),
            "blank_lines": stats.get("blank_lines", 0),
            "rows_skipped": stats.get("rows_skipped", 0),
            "skipped": {"total": bad.get("total", 0), "by_reason": dict(bad.get("by_reason", {})), "first": list(bad.get("first", []))},
        }


def cache_path(source: TableSource, options: EncodeOptions, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()).expanduser() / cache_key(source.identity(), options.to_dict())


def preprocess(
    source: TableSource,
    options: EncodeOptions | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> PreprocessResult:
    """Encode ``source`` into the cache (or reuse the cache built earlier with the same file and options).

    Example:
        >>> from lightning_afm.data.readers import criteo_source
        >>> res = preprocess(criteo_source("train.txt"), EncodeOptions(), "/tmp/cache")  # doctest: +SKIP
        >>> res.schema.vocab_sizes[:3], res.reused  # doctest: +SKIP
    """
    options = options or EncodeOptions()
    if source.spec.label is None:
        raise DataConfigError(f"{source.path}: training needs a label column; name it (e.g. label=click)")
    source.check()  # columns, emptiness: before any work
    final = cache_path(source, options, cache_dir)
    if final.exists():
        problem = cache_problem(final)
        if problem is None:
            log.info("reusing the encoded cache %s (same file and options)", final)
            return load_result(final, reused=True)
        log.warning("the encoded cache %s is damaged (%s): rebuilding it", final, problem)
    started = time.perf_counter()
    with cache_write_errors(final):
        if final.exists():
            discard_directory(final)
        with atomic_directory(final) as tmp:
            _encode(source, options, tmp, progress, final.name)
    result = load_result(final, reused=False)
    log.info(
        "encoded %s rows of %s in %.1f s into %s",
        f"{result.stats['rows_encoded']:,}", source.path, time.perf_counter() - started, final,
    )
    return result


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def cache_write_errors(final: Path):
    """Turn a read-only or full cache directory into a :class:`CacheError` that says what to do.

    Only those errnos are translated: other errors (a bad row, a bug) pass as they are.
    """
    try:
        yield
    except OSError as exc:
        where = final.parent
        what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        if exc.errno in _NOT_WRITABLE:
            raise CacheError(
                f"cannot write the encoded cache in {where} ({what}). Set data.cache_dir (or $LIGHTNING_AFM_CACHE) "
                f"to a writable directory, or make {where} writable"
            ) from exc
        if exc.errno in _NO_SPACE:
            free = _free_bytes(where)
            raise CacheError(
                f"no space left to write the encoded cache in {where} ({what}; {free} free now; the partial cache "
                "was removed). Free some space there, or set data.cache_dir (or $LIGHTNING_AFM_CACHE) to a "
                "directory on a larger disk"
            ) from exc
        raise


def _free_bytes(directory: Path) -> str:
    import shutil

    try:
        return f"{shutil.disk_usage(directory).free / 2**30:.2f} GiB"
    except OSError:
        return "unknown"


def discard_directory(path: Path) -> None:
    """Remove a damaged cache directory: renamed aside first (atomic), so no reader finds it half deleted."""
    import shutil
    import uuid

    aside = path.with_name(f".{path.name}.damaged-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another process removed it already
    shutil.rmtree(aside, ignore_errors=True)


def load_result(path: Path, reused: bool) -> PreprocessResult:
    import json

    return PreprocessResult(path, Schema.load(path / "schema.json"), json.loads((path / "stats.json").read_text()), reused)


class _SplitWriter:
    """The three append-only arrays of one split."""

    def __init__(self, directory: Path, num_fields: int, num_numeric: int, budget: MemoryBudget) -> None:
        directory.mkdir()
        self.categorical = NpyAppender(directory / "categorical.npy", np.int32, (num_fields,), budget)
        self.numeric = NpyAppender(directory / "numeric.npy", np.float32, (num_numeric,), budget)
        self.label = NpyAppender(directory / "label.npy", np.float32, (), budget)

    def append(self, categorical: np.ndarray, numeric: np.ndarray, label: np.ndarray) -> None:
        """New arrays (not views of reused buffers): the appenders keep them without a copy."""
        self.categorical.append(categorical, owned=True)
        self.numeric.append(numeric, owned=True)
        self.label.append(label, owned=True)

    def close(self) -> int:
        for w in (self.categorical, self.numeric, self.label):
            w.close()
        return self.label.rows


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values in order of first appearance ``[u]`` and each row's index into them ``[n]``.

    First-appearance order (as Arrow's ``dictionary_encode``) makes ids, and so
    ties in the vocabulary order, independent of how the file was chunked.
    """
    distinct, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return distinct[order], rank[inverse.ravel()]


class _Workers:
    """Runs the per-column tasks of a chunk on a thread pool (inline on a single core).

    The columns of a chunk are independent and Arrow and numpy release the GIL,
    so they spread over the cores; one pool thread per core, sharing them with
    the reader thread, measured fastest on 2 cores (3.7 s vs 4.2 s inline for 1M rows).
    """

    def __init__(self) -> None:
        workers = min(8, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="lightning-afm-encode") if workers > 1 else None

    def map(self, fn, items):
        return list(self._pool.map(fn, items)) if self._pool else [fn(i) for i in items]

    def shutdown(self) -> None:
        if self._pool:
            self._pool.shutdown()


class _SplitOf:
    """The split of each row, drawn from the row's own index among the file's data records.

    :func:`split_assignment` over the counted data lines, looked up by the
    row's 0-based record index (:meth:`RawChunk.data_index`). A row the parser
    drops keeps its index, so skipping it leaves every other row's split as it
    is; a file without skipped rows gets exactly the scikit-learn split.
    """

    def __init__(self, total: int, options: EncodeOptions, source: TableSource) -> None:
        if total == 0:
            raise DataConfigError(f"{source.path} has no data rows")
        self._assignment = split_assignment(total, options.test_fraction, options.val_fraction, options.seed)

    def rows(self) -> int:
        return len(self._assignment)

    def __call__(self, index: np.ndarray) -> np.ndarray:
        """Splits ``int8 [n]`` of the rows with 0-based data indices ``index`` ``int64 [n]``.

        An index beyond the count (impossible while records <= lines) goes to train.
        """
        assignment = self._assignment
        inside = (index >= 0) & (index < len(assignment))
        split = np.full(len(index), TRAIN, dtype=np.int8)
        split[inside] = assignment[index[inside]]
        return split


class _Buffers:
    """Per-chunk work arrays, allocated once and reused.

    Fresh large arrays cost a page fault per 4 KiB on first touch (glibc maps
    anything over 32 MiB afresh every time); reuse keeps the pass CPU-bound.
    """

    def __init__(self, num_fields: int, num_numeric: int) -> None:
        self.num_fields, self.num_numeric, self.rows = num_fields, num_numeric, 0

    def reserve(self, rows: int) -> None:
        if rows <= self.rows:
            return
        rows = int(rows * 1.25)  # chunks vary by a parser block: grow with headroom, not every time
        self.rows = rows
        self.ids = np.empty((rows, self.num_fields), dtype=np.int32)
        self.numeric = np.empty((rows, self.num_numeric), dtype=np.float64)
        self.numeric32 = np.empty((rows, self.num_numeric), dtype=np.float32)


def validate_chunk(chunk: RawChunk, source: TableSource, on_bad_rows: str, bad_rows: BadRows, pool, numeric: np.ndarray):
    """Labels ``float32 [n]`` (``None`` when ``source.spec.label`` is ``None``: rows to score), numbers
    (into ``numeric`` float64 ``[n, N]``, NaN = missing) and the rows to keep (``None`` = all).

    Shared by training (:func:`preprocess`) and serving (:mod:`.encoder`): a bad value raises
    :class:`MalformedRowError` naming its line and column, or is counted in ``bad_rows``.
    ``pool`` has ``map(fn, items)`` (a thread pool, or ``_Inline``).
    """
    spec = source.spec
    table = chunk.table
    first = -1 if spec.label is not None else 0  # task -1 parses the label

    def parse(j: int):
        if j < 0:
            return parse_label(table.column(spec.label))
        values, bad_j, why_j = parse_numeric(table.column(spec.numeric[j]), integer=spec.integer_numeric)
        numeric[:, j] = values
        return None, bad_j, why_j

    results = list(pool.map(parse, range(first, len(spec.numeric))))  # Arrow and numpy release the GIL
    label = results[0][0] if first < 0 else None
    # (column, bad rows, reason, how to fix it or None)
    names = ((spec.label,) if first < 0 else ()) + spec.numeric
    problems = [(name, bad, why, None) for name, (_, bad, why) in zip(names, results)]
    for j, name in enumerate(spec.numeric):
        huge = beyond_float32(numeric[:, j])
        if huge.any():
            problems.append((name, huge, BEYOND_FLOAT32, BEYOND_FLOAT32_FIX))
    any_bad = np.zeros(table.num_rows, dtype=bool)
    for _, mask, _, _ in problems:
        any_bad |= mask
    if not any_bad.any():
        return label, numeric, None
    if on_bad_rows == "error":
        row = int(np.flatnonzero(any_bad)[0])
        name, _, why, hint = next(p for p in problems if p[1][row])
        value = display(table.column(name)[row].as_py())
        raise MalformedRowError(source.path, chunk.line_of(row), name, f"{why}, got {value!r}", where=source.where, hint=hint)
    for name, mask, why, _ in problems:
        if mask.any():
            for row in np.flatnonzero(mask)[: bad_rows.max_examples]:  # the earliest few are reported
                value = display(table.column(name)[int(row)].as_py())
                bad_rows.add(f"{name}: {why}", 0, records=[int(chunk.records[row])], column=name, detail=f"{why}, got {value!r}")
            bad_rows.add(f"{name}: {why}", int(mask.sum()))
    return label, numeric, ~any_bad


def field_keys(table: pa.Table, numeric: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The keys of field ``f``'s distinct values in a chunk ``[u]`` and each row's index into them ``[n]``.

    Fields ``f < table.num_columns`` are the table's categorical columns (string keys, see
    :mod:`.keys`); the rest are the log buckets of ``numeric`` ``[n, N]`` (NaN = missing,
    ``int64`` keys). ``None`` for a column without chunks (no rows). Shared by training and
    serving (:mod:`.encoder`), so a value gets the same key in both.
    """
    if f < table.num_columns:
        column = table.column(f)
        if pa.types.is_dictionary(column.type):  # e.g. pandas categoricals in Parquet: one dictionary per row group
            column = column.cast(column.type.value_type)
        row_keys = fixed8_row_keys(column)
        if row_keys is not None:  # Criteo: hash the 8 bytes as one integer
            encoded = pc.dictionary_encode(pa.array(row_keys), memory_pool=memory_pool())
            keys = encoded.dictionary.to_numpy()
            indices = encoded.indices.to_numpy()
        else:
            encoded = pc.dictionary_encode(column, null_encoding="encode", memory_pool=memory_pool())
            if encoded.num_chunks == 0:
                return None
            indices = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in encoded.chunks])
            keys = string_keys(encoded.chunk(0).dictionary)
    else:
        keys, indices = _factorize(log_bucket(numeric[:, f - table.num_columns]))
    return keys, indices


def _encode_field(
    table: pa.Table, numeric: np.ndarray, ids: np.ndarray, dictionaries: list[GrowingDictionary], f: int
) -> tuple[np.ndarray, np.ndarray]:
    """Encode field ``f`` of a chunk into column ``f`` of ``ids`` ``[n, F]`` (provisional ids).

    Returns the provisional ids of the chunk's distinct values ``[u]`` and each
    row's index into them ``[n]`` (for counting the training rows).
    """
    found = field_keys(table, numeric, f)
    if found is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys, indices = found
    provisional = dictionaries[f].ids_for(keys)
    # mode="clip": the indices are valid by construction, and numpy's default
    # checking mode with out= is 10x slower (it buffers the whole result).
    ids[:, f] = np.take(provisional.astype(np.int32), indices, mode="clip")
    return provisional, indices


@contextmanager
def _arrow_memory_kept():
    """Keep freed Arrow (jemalloc) pages for reuse during the pass, instead of returning them to the OS.

    Each chunk frees what the next one allocates; returned pages come back
    zero-filled by the kernel at a page fault each (~20% of the pass here).
    Arrow's default decay (1 s) is restored afterwards.
    """
    try:
        pa.jemalloc_set_decay_ms(-1)
    except (NotImplementedError, pa.ArrowNotImplementedError):
        yield
        return
    try:
        yield
    finally:
        pa.jemalloc_set_decay_ms(1000)


def _encode(source: TableSource, options: EncodeOptions, out: Path, progress: bool, key: str) -> None:
    with _arrow_memory_kept():
        _encode_kept(source, options, out, progress, key)


def _encode_kept(source: TableSource, options: EncodeOptions, out: Path, progress: bool, key: str) -> None:
    from tqdm.auto import tqdm

    spec = source.spec
    started = time.perf_counter()
    bad_rows = BadRows()
    # The reader thread starts parsing while this thread counts the rows (the split needs the
    # total). Counting in a third thread instead measured slower on 2 cores: it then competes
    # with the encoding of the first chunk, which has to wait for it anyway.
    chunks = source.chunks(options.on_bad_rows, bad_rows)
    try:
        split_of = _SplitOf(source.count_rows(progress), options, source)
    except BaseException:
        chunks.close()
        raise
    count_seconds = time.perf_counter() - started

    num_cat, num_num = len(spec.categorical), len(spec.numeric)
    num_bucket = num_num if options.log_buckets else 0
    num_fields = num_cat + num_bucket
    dictionaries = [GrowingDictionary() for _ in range(num_fields)]
    minmax = RunningMinMax(num_num)
    budget = MemoryBudget(HELD_BYTES)
    writers = {s: _SplitWriter(out / name, num_fields, num_num, budget) for s, name in enumerate(SPLIT_NAMES)}
    rows_read = 0
    buffers = _Buffers(num_fields, num_num)

    bar = tqdm(total=split_of.rows(), unit="rows", unit_scale=True, desc=f"encoding {source.path.name}", disable=not progress)
    pool = _Workers()
    try:
        for chunk in chunks:
            n = chunk.table.num_rows
            rows_read += n
            buffers.reserve(n)
            label, numeric, keep = validate_chunk(chunk, source, options.on_bad_rows, bad_rows, pool, buffers.numeric[:n])
            table = chunk.table.select(list(spec.categorical))
            if keep is not None:
                label, numeric = label[keep], numeric[keep]
                table = table.filter(keep)
                n = len(label)
            ids = buffers.ids[:n]
            # fields are independent: one task each
            encoded = pool.map(partial(_encode_field, table, numeric, ids, dictionaries), range(num_fields))
            split = split_of(chunk.data_index())
            if keep is not None:
                split = split[keep]
            is_train = split == TRAIN
            for f, (provisional, indices) in enumerate(encoded):
                dictionaries[f].add_counts(provisional, np.bincount(indices[is_train], minlength=len(provisional)))
            numeric32 = fill_missing(numeric, out=buffers.numeric32[:n])  # missing -> 0; numeric is filled in place
            minmax.update(numeric, where=is_train)
            # Each split's rows in file order (a stable radix sort of int8), gathered into
            # new arrays that the writers keep as they are.
            order = np.argsort(split, kind="stable")
            edges = np.concatenate([[0], np.cumsum(np.bincount(split, minlength=len(SPLIT_NAMES)))])
            for s, writer in writers.items():
                rows = order[edges[s] : edges[s + 1]]
                writer.append(
                    np.take(ids, rows, axis=0, mode="clip"), np.take(numeric32, rows, axis=0, mode="clip"), label[rows]
                )
            bar.update(chunk.table.num_rows)
    finally:
        chunks.close()
        pool.shutdown()
        bar.close()
        sizes = {SPLIT_NAMES[s]: w.close() for s, w in writers.items()}
    expected_rows = split_of.rows()
    parse_seconds = time.perf_counter() - started

    if sizes["train"] == 0:
        raise DataConfigError(f"{source.path}: no valid training rows (read {rows_read:,}, skipped {bad_rows.total:,})")
    bad_rows.resolve(source)  # record numbers -> file lines, once
    if bad_rows.total:
        log.warning("%s: skipped %s malformed rows: %s; e.g. %s", source.path, f"{bad_rows.total:,}", bad_rows.by_reason, bad_rows.examples[:3])

    # Vocabularies from the training counts, then the fix-up pass.
    names = list(spec.categorical) + [f"{c}{BUCKET_SUFFIX}" for c in spec.numeric[:num_bucket]]
    (out / "vocab").mkdir()
    remaps, fields, distinct, oov = [], [], [], []
    for f, name in enumerate(names):
        d = dictionaries[f]
        missing = np.asarray(MISSING_BUCKET if f >= num_cat else np.uint64(0))
        counts = d.counts
        remap, kept = build_vocab(counts, options.min_count, d.id_of(missing))
        remaps.append(remap.astype(np.int32))
        fields.append(CategoricalField(name, len(kept) + 1))
        distinct.append(int((counts > 0).sum()))
        oov.append(int(counts.sum() - counts[kept].sum()))
        save_vocab(vocab_path(out, name), keys_to_arrow(d.keys_by_id()[kept]), counts[kept], oov[-1])

    # One lookup table for all fields: field f's provisional id p is entry offsets[f] + p.
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in remaps])[:-1]]).astype(np.int64)
    all_remap = np.concatenate(remaps) if remaps else np.zeros(0, np.int32)

    def remap_block(block: np.ndarray) -> np.ndarray:
        return np.take(all_remap, block + offsets, out=block, mode="clip")

    vocab_seconds = time.perf_counter() - started - parse_seconds
    low, high = minmax.low.copy(), minmax.high.copy()
    for writer in writers.values():
        writer.categorical.finish(remap_block)
        writer.numeric.finish(lambda block: minmax_scale(block, low, high, out=block) if num_num else block)
        writer.label.finish()

    finite = lambda a: [float(x) if np.isfinite(x) else None for x in a]  # noqa: E731
    schema = Schema(
        categorical=tuple(fields),
        numeric=tuple(spec.numeric),
        label=spec.label,
        extra={
            "source": source.kind,
            "path": str(source.path.resolve()),
            "rows": sizes,
            "min_count": int(options.min_count),
            "log_buckets": bool(options.log_buckets),
            "numeric_min": finite(low),
            "numeric_max": finite(high),
            "distinct_train_values": distinct,
            "oov_train_occurrences": oov,
            "bad_rows": bad_rows.to_dict(),
            "cache_key": key,
        },
    )
    total_seconds = time.perf_counter() - started
    stats = {
        "source": source.identity(),
        "options": options.to_dict(),
        "rows_counted": expected_rows,
        "rows_read": rows_read,
        "rows_encoded": int(sum(sizes.values())),
        "rows_skipped": bad_rows.total,
        "bad_rows": bad_rows.to_dict(),
        "blank_lines": int(getattr(source, "blank_lines", None) or 0),
        "split_rows": sizes,
        "seconds_count_rows": round(count_seconds, 3),
        "seconds_read_encode": round(parse_seconds - count_seconds, 3),
        "seconds_vocab": round(vocab_seconds, 3),
        "seconds_total": round(total_seconds, 3),
        "rows_per_second": round(rows_read / max(total_seconds, 1e-9), 1),
    }
    write_json(out / "stats.json", stats)
    schema.save(out / "schema.json")  # written last: its presence marks a complete cache


def encode_arrays(
    categorical: np.ndarray,
    numeric: np.ndarray,
    label: np.ndarray,
    assignment: np.ndarray,
    names: list[str],
    numeric_names: list[str],
    min_count: int = 1,
) -> tuple[Schema, dict[str, dict[str, np.ndarray]]]:
    """The in-memory twin of :func:`preprocess`, for tables that already are arrays (synthetic data).

    Args:
        categorical: raw values ``int64 [n, F]``, non-negative, ``-1`` = missing.
        numeric: ``float64 [n, N]``, NaN = missing.
        label: ``[n]`` in {0, 1}.
        assignment: ``int8 [n]`` split of each row (:func:`split_assignment`).

    Returns:
        The schema and, per split name, ``{"categorical": int32 [m, F],
        "numeric": float32 [m, N], "label": float32 [m]}`` with the same
        encoding rules as the cache: training vocabularies, ``min_count``, OOV 0,
        missing its own token, min-max from training.
    """
    n, num_fields = categorical.shape
    is_train = assignment == TRAIN
    encoded = np.empty((n, num_fields), dtype=np.int32)
    fields = []
    for f, name in enumerate(names):
        shifted = categorical[:, f] + 1  # missing (-1) -> 0, its own token
        counts = np.bincount(shifted[is_train], minlength=int(shifted.max(initial=0)) + 1)
        remap, kept = build_vocab(counts, min_count, missing_id=0)
        encoded[:, f] = remap[shifted]
        fields.append(CategoricalField(name, len(kept) + 1))
    filled = np.nan_to_num(numeric, nan=0.0)
    minmax = RunningMinMax(filled.shape[1])
    minmax.update(filled[is_train])
    scaled = minmax_scale(filled, minmax.low, minmax.high)
    label = np.asarray(label, dtype=np.float32)
    splits = {
        name: {"categorical": encoded[assignment == s], "numeric": scaled[assignment == s], "label": label[assignment == s]}
        for s, name in enumerate(SPLIT_NAMES)
    }
    schema = Schema(
        categorical=tuple(fields),
        numeric=tuple(numeric_names),
        extra={
            "rows": {name: int(len(v["label"])) for name, v in splits.items()},
            "min_count": int(min_count),
            "numeric_min": minmax.low.tolist(),
            "numeric_max": minmax.high.tolist(),
        },
    )
    return schema, splits
