"""Errors raised by the data layer.

Every error says what was wrong and how to fix it. Configuration problems are
raised before any row is read; malformed rows name the file, the line and the
column.
"""

from __future__ import annotations

from pathlib import Path

ON_BAD_ROWS = ("error", "skip")


class DataError(ValueError):
    """Base class of the data layer's errors (a ``ValueError``)."""


class DataConfigError(DataError):
    """The configuration does not fit the input: a missing file or column, empty input, bad options."""


class CacheError(DataError):
    """The encoded cache cannot be written (permissions, a full disk) or is damaged and cannot be rebuilt in place."""


class MalformedRowError(DataError):
    """A row that cannot be parsed: wrong column count, a non-numeric number, a label not 0/1.

    Attributes ``path``, ``line`` (1-based line in the file, header included;
    for Parquet the 1-based row), ``column`` (``None`` for a wrong column count)
    and ``reason`` are kept for programs that want to react to the error.
    """

    def __init__(
        self, path: str | Path, line: int | None, column: str | None, reason: str, where: str = "line", hint: str | None = None
    ):
        self.path = str(path)
        self.line = line
        self.column = column
        self.reason = reason
        loc = f"{self.path}, {where} {line if line is not None else '?'}"
        col = f", column {column!r}" if column is not None else ""
        fix = f" {hint}." if hint else ""
        super().__init__(
            f"{loc}{col}: {reason}.{fix} Fix the input, or pass on_bad_rows='skip' to skip such rows "
            "(they are counted and reported)."
        )


def check_on_bad_rows(value: str) -> str:
    if value not in ON_BAD_ROWS:
        raise DataConfigError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {value!r}")
    return value
