"""Arrow columns -> numpy with validation: labels, numbers, and where each bad value is.

The CSV readers hand over label and numeric columns as strings so that one bad
value cannot abort a whole block inside Arrow; here the fast path casts the
whole column at once and only a failing cast pays for locating the bad rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_INTEGER = r"^\s*[+-]?[0-9]+\s*$"
_FLOAT = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$|^\s*[+-]?(nan|NaN|NAN|inf|Inf|INF|infinity|Infinity)\s*$"


def _as_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _cast(column, target: pa.DataType):
    from .readers import memory_pool

    return pc.cast(column, target, memory_pool=memory_pool())


def _cast_or_none(column: pa.Array, target: pa.DataType) -> pa.Array | None:
    try:
        return _cast(column, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _uncastable(column: pa.Array, target: pa.DataType, pattern: str) -> np.ndarray:
    """Mask ``bool [n]`` of the values of a string column that do not cast to ``target``.

    A regex finds the usual suspects; the cast itself then has the last word,
    bisecting for any value the regex let through, so the mask is exact.
    """
    matches = pc.match_substring_regex(column, pattern)
    bad = ~pc.fill_null(matches, True).to_numpy(zero_copy_only=False)
    while True:
        rest = np.flatnonzero(~bad)
        if _cast_or_none(column.take(pa.array(rest)), target) is not None:
            return bad
        lo, hi = 0, len(rest)  # the first failing value among `rest` lies in [lo, hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _cast_or_none(column.take(pa.array(rest[lo:mid])), target) is None:
                hi = mid
            else:
                lo = mid
        bad[rest[lo]] = True


def _tidy_text(column: pa.Array) -> pa.Array:
    """Slow path only: surrounding blanks are not an error, an empty string is a missing value."""
    try:
        column = pc.utf8_trim_whitespace(column.cast(pa.string()))
    except pa.ArrowInvalid:  # not UTF-8: leave the bytes as they are, the cast will name them
        return column
    return pc.if_else(pc.equal(column, ""), pa.nulls(len(column), pa.string()), column)


def display(value) -> object:
    """A cell for an error message: bytes read from a file are shown as text."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def is_textual(column: pa.Array | pa.ChunkedArray) -> bool:
    t = column.type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def parse_numeric(column: pa.Array | pa.ChunkedArray, integer: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Numbers of a column: ``float64 [n]`` (NaN where missing), a ``bool [n]`` mask of bad values, and the reason text.

    ``integer=True`` (Criteo's I1..I13) rejects anything that is not a whole
    number; otherwise any finite float is accepted, ``nan`` reads as missing.

    Example:
        >>> v, bad, why = parse_numeric(pa.array(["3", None, "x", "-2"]), integer=True)
        >>> v[[0, 3]].tolist(), bool(np.isnan(v[1])), bad.tolist()
        ([3.0, -2.0], True, [False, False, True, False])
    """
    reason = "not an integer" if integer else "not a finite number"
    bad = None
    if is_textual(column):
        target = pa.int64() if integer else pa.float64()
        typed = _cast_or_none(column, target)  # the fast path: one cast of the whole (chunked) column
        if typed is None:
            column = _tidy_text(_as_array(column))
            typed = _cast_or_none(column, target)
        if typed is None:
            bad = _uncastable(column, target, _INTEGER if integer else _FLOAT)
            typed = pc.cast(pc.if_else(pa.array(bad), pa.nulls(len(column), column.type), column), target)
    elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type) or pa.types.is_decimal(column.type):
        typed = column
        if integer and pa.types.is_floating(column.type):
            values = column.to_numpy(zero_copy_only=False)
            bad = np.isfinite(values) & (values != np.round(values))
    else:
        raise TypeError(f"cannot read numbers from a column of type {column.type}")
    if not (pa.types.is_integer(typed.type) or pa.types.is_floating(typed.type)):
        typed = _cast(typed, pa.float64())
    # Arrow hands integers with nulls over as float64 with NaN: no second cast needed.
    values = np.array(typed.to_numpy(zero_copy_only=False), dtype=np.float64, copy=True)
    if bad is None:
        bad = np.zeros(len(values), dtype=bool)
    if pa.types.is_floating(typed.type):
        infinite = np.isinf(values)
        if infinite.any():
            bad |= infinite
    if bad.any():
        values[bad] = np.nan
    return values, bad, reason


FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38: the cache stores numbers as float32


def beyond_float32(values: np.ndarray) -> np.ndarray:
    """Mask ``bool [n]`` of finite ``float64 [n]`` values whose magnitude float32 cannot hold.

    Such a value would become +-inf in the float32 cache, and as the training
    maximum it would squash every other value of its field to 0 in the min-max
    scaling: the field would silently carry no information.
    """
    with np.errstate(invalid="ignore"):
        return np.abs(values) > FLOAT32_MAX


BEYOND_FLOAT32 = f"beyond the float32 range (|x| > {FLOAT32_MAX:.4g})"
BEYOND_FLOAT32_FIX = (
    "The cache stores numbers as float32: rescale the column (e.g. divide it by a power of ten, "
    "or take a log) or clip it to that range"
)


def parse_label(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, str]:
    """Labels ``float32 [n]`` in {0, 1}, a ``bool [n]`` mask of values that are not 0/1 (missing included), the reason.

    Example:
        >>> y, bad, _ = parse_label(pa.array(["1", "0", "2", None]))
        >>> y[:2].tolist(), bad.tolist()
        ([1.0, 0.0], [False, False, True, True])
    """
    column = _as_array(column)
    if is_textual(column):
        typed = _cast_or_none(column, pa.float64())
        if typed is None:
            column = _tidy_text(column)
            typed = _cast_or_none(column, pa.float64())
        if typed is None:
            bad_text = _uncastable(column, pa.float64(), _FLOAT)
            typed = pc.cast(pc.if_else(pa.array(bad_text), pa.nulls(len(column), column.type), column), pa.float64())
    else:
        typed = _cast(column, pa.float64())
    values = typed.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    bad = ~((values == 0.0) | (values == 1.0))  # NaN (missing or unreadable) is bad too
    labels = np.where(bad, 0.0, values).astype(np.float32)
    return labels, bad, "label must be 0 or 1"
