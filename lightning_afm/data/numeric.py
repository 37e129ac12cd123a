"""Numeric fields: the paper's min-max scaling and the log-bucket option.

Paper mode (DeepCTR's example, which the authors ran): a missing value is
filled with 0, then each field is min-max scaled to [0, 1] with the minimum and
maximum of the training split. Values of other splits outside that range are
clipped, so the model never sees a number it was not trained on. For every
Criteo field except I2 (minimum -3) the training minimum is 0, so a missing
value is exactly 0 after scaling.

Log buckets (the Criteo competition winners' trick): an integer ``x > 2``
becomes ``floor(log(x)^2)``, smaller values stay themselves, missing is a token
of its own; the result is one more categorical field.
"""

from __future__ import annotations

import numpy as np

from .keys import MISSING_BUCKET


class RunningMinMax:
    """Column-wise minimum and maximum over chunks (``float64``), NaN ignored.

    Example:
        >>> mm = RunningMinMax(2)
        >>> mm.update(np.array([[1.0, 5.0], [3.0, np.nan]]))
        >>> mm.update(np.array([[-1.0, 2.0], [-9.0, 9.0]]), where=np.array([True, False]))
        >>> mm.low.tolist(), mm.high.tolist()
        ([-1.0, 2.0], [3.0, 5.0])
    """

    def __init__(self, num_columns: int) -> None:
        self.low = np.full(num_columns, np.inf)
        self.high = np.full(num_columns, -np.inf)

    def update(self, values: np.ndarray, where: np.ndarray | None = None) -> None:
        """``values``: ``[n, N]``; ``where`` (bool ``[n]``): only these rows count (no copy is made)."""
        if values.shape[0] == 0 or values.shape[1] == 0:
            return
        mask = True if where is None else np.broadcast_to(np.asarray(where, dtype=bool)[:, None], values.shape)
        self.low = np.fmin(self.low, np.fmin.reduce(values, axis=0, where=mask, initial=np.inf))
        self.high = np.fmax(self.high, np.fmax.reduce(values, axis=0, where=mask, initial=-np.inf))


def fill_missing(values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The paper's fill, as stored: NaN (missing) -> 0 in ``values`` (float64 ``[n, N]``, in place), then rounded to float32.

    Returns ``out`` (float32 ``[n, N]``, fresh when ``None``). The cache stores these float32
    values and :func:`minmax_scale` scales them later; serving does the same two steps, so a
    row gets bit-identical inputs in both.
    """
    np.nan_to_num(values, copy=False, nan=0.0)
    if out is None:
        return values.astype(np.float32)
    out[...] = values
    return out


def minmax_scale(values: np.ndarray, low: np.ndarray, high: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Scale ``values`` ``[n, N]`` to [0, 1] column-wise and clip; returns ``float32 [n, N]``.

    A constant column (``high == low``) or one never observed in training
    scales to 0; NaN (never produced by the readers) also becomes 0. ``out``
    (float32 ``[n, N]``, may be ``values`` itself) avoids a fresh result array.

    Example:
        >>> minmax_scale(np.array([[0.0], [5.0], [20.0]]), np.array([0.0]), np.array([10.0])).ravel().tolist()
        [0.0, 0.5, 1.0]
    """
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    span = high - low
    ok = np.isfinite(span) & (span > 0)
    scale = np.where(ok, 1.0 / np.where(ok, span, 1.0), 0.0)
    shift = np.where(ok, low, 0.0)
    result = np.empty(values.shape, dtype=np.float32) if out is None else out
    step = 1 << 16  # float64 arithmetic a slice at a time: exact enough, and no large temporaries
    for start in range(0, values.shape[0], step):
        part = (np.asarray(values[start : start + step], dtype=np.float64) - shift) * scale
        np.clip(part, 0.0, 1.0, out=part)
        part[~np.isfinite(part)] = 0.0
        result[start : start + step] = part
    return result


def log_bucket(values: np.ndarray) -> np.ndarray:
    """The winners' bucket of each value: ``float64 [...]`` (NaN = missing) -> ``int64 [...]``.

    Example:
        >>> log_bucket(np.array([np.nan, -3.0, 2.0, 3.0, 100.0])).tolist()[1:]
        [-3, 2, 1, 21]
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, MISSING_BUCKET, dtype=np.int64)
    present = ~np.isnan(values)
    big = present & (values > 2)
    small = present & ~big
    out[big] = np.floor(np.log(values[big]) ** 2).astype(np.int64)
    out[small] = np.floor(values[small]).astype(np.int64)
    return out
