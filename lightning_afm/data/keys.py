"""Exact, compact keys for categorical values and a dictionary that grows chunk by chunk.

A streamed file is encoded chunk by chunk, so a value must get the same id in
every chunk. Python dicts of strings would cost ~100 bytes per distinct value
(Criteo has 33.8M); instead each value becomes a numpy key:

* strings of at most 8 bytes (every Criteo and Avazu token) are packed
  big-endian into one ``uint64``, which sorts like the bytes and compares in
  one instruction;
* longer strings become fixed-width ``S<w>`` byte strings;
* log-bucket fields use ``int64`` keys directly.

The empty string (and a null, which the readers treat alike) is the key ``0``
/ ``b""``: the missing value is a token of its own.

:class:`GrowingDictionary` keeps the keys sorted, with the id each got when it
was first seen, and looks up a chunk's distinct values with ``searchsorted``;
new values are merged in with one ``np.insert`` per chunk.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MISSING_BUCKET = np.iinfo(np.int64).min  # the key of a missing value in an int64 (log-bucket) field


def string_keys(values: pa.Array) -> np.ndarray:
    """Keys of a string/binary arrow array (nulls read as the empty string).

    Returns ``uint64 [n]`` when every value has at most 8 bytes, else ``S<w> [n]``.

    Example:
        >>> [hex(k) for k in string_keys(pa.array(["ab", None, ""])).tolist()]
        ['0x6162000000000000', '0x0', '0x0']
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        offset_type = np.int64
    elif pa.types.is_string(values.type) or pa.types.is_binary(values.type):
        offset_type = np.int32
    else:
        values = values.cast(pa.string())
        offset_type = np.int32
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    validity, offsets_buf, data_buf = values.buffers()[:3]
    offsets = np.frombuffer(offsets_buf, dtype=offset_type, count=n + 1, offset=values.offset * np.dtype(offset_type).itemsize)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = np.diff(offsets).astype(np.int64)
    if values.null_count:
        # Arrow allows a null slot to have a non-zero length: ignore its bytes.
        lengths[values.is_null().to_numpy(zero_copy_only=False)] = 0
    width = int(lengths.max(initial=0))
    if width == 8 and not ((lengths != 0) & (lengths != 8)).any():
        # Criteo's case: every value is 8 bytes or missing, and the bytes of the
        # present ones lie back to back in the data buffer: read them as one array.
        out = np.zeros(n, dtype=np.uint64)
        present = lengths == 8
        first = int(starts[present][0]) if present.any() else 0
        run = data[first : first + 8 * int(present.sum())]
        if present.any() and np.array_equal(starts[present], first + 8 * np.arange(int(present.sum()))):
            out[present] = run.view(">u8")
            return out
    packed = np.zeros((n, max(width, 8)), dtype=np.uint8)
    for j in range(width):  # one vectorised gather per byte position; width is small
        has = lengths > j
        packed[has, j] = data[starts[has] + j]
    if width <= 8:
        return packed.view(">u8").ravel().astype(np.uint64)
    return packed.view(f"S{packed.shape[1]}").ravel()


def fixed8_row_keys(column: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """Per-row ``uint64`` keys when every value is exactly 8 bytes or missing (Criteo's hex tokens), else ``None``.

    Then the bytes are the key: no hashing of strings, and Arrow's integer
    hashing of the keys is ~2x faster than its string hashing (measured).
    Returns ``uint64 [n]`` (0 = missing), equal to :func:`string_keys` per row.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    for arr in chunks:
        if not (pa.types.is_binary(arr.type) or pa.types.is_string(arr.type)) or len(arr) == 0:
            if len(arr) == 0:
                continue
            return None
        n = len(arr)
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
        data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
        if arr.null_count == 0 and offsets[-1] - offsets[0] == 8 * n:
            # no missing value: if all lengths are 8 the bytes are one (n, 8) block
            if (offsets[1:] - offsets[:-1] == 8).all():
                out.append(data[offsets[0] : offsets[-1]].view(">u8").astype(np.uint64))
                continue
            return None
        lengths = np.diff(offsets)
        present = lengths == 8
        if not (present | (lengths == 0)).all():
            return None
        if arr.null_count and (lengths[arr.is_null().to_numpy(zero_copy_only=False)] != 0).any():
            return None
        keys = np.zeros(n, dtype=np.uint64)
        if present.any():
            keys[present] = data[offsets[0] : offsets[-1]].view(">u8")
        out.append(keys)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


def keys_to_arrow(keys: np.ndarray) -> pa.Array:
    """Inverse of :func:`string_keys` for the vocab files: ``[n]`` keys -> arrow strings.

    The missing value comes back as ``""``; bytes that are not UTF-8 stay binary.
    """
    if keys.dtype == np.int64:
        text = pa.array(keys).cast(pa.string())
        return pc.if_else(pa.array(keys == MISSING_BUCKET), "", text)
    if keys.dtype == np.uint64:
        keys = keys.astype(">u8").view("S8")
    raw = pa.array(keys, type=pa.binary())
    try:
        return raw.cast(pa.string())
    except pa.ArrowInvalid:
        return raw


def _common(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bring two key arrays to one comparable dtype (uint64 widens to bytes when needed)."""
    if a.dtype == b.dtype:
        return a, b
    if a.dtype.kind == "S" or b.dtype.kind == "S":
        a = a.astype(">u8").view("S8") if a.dtype == np.uint64 else a
        b = b.astype(">u8").view("S8") if b.dtype == np.uint64 else b
        width = max(a.dtype.itemsize, b.dtype.itemsize)
        return a.astype(f"S{width}"), b.astype(f"S{width}")
    raise TypeError(f"cannot compare keys of dtypes {a.dtype} and {b.dtype}")


def _merge(base: np.ndarray, at: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.insert(base, at, values)`` for sorted ``at``, without its slow general path (10x here)."""
    out = np.empty(len(base) + len(values), dtype=base.dtype)
    dest = at + np.arange(len(values))
    keep = np.ones(len(out), dtype=bool)
    keep[dest] = False
    out[dest] = values
    out[keep] = base
    return out


class GrowingDictionary:
    """Maps keys to dense ids ``0, 1, 2, ...`` in order of first appearance.

    Example:
        >>> d = GrowingDictionary()
        >>> d.ids_for(np.array([30, 10], dtype=np.int64)).tolist()
        [0, 1]
        >>> d.ids_for(np.array([10, 20], dtype=np.int64)).tolist()
        [1, 2]
        >>> d.keys_by_id().tolist()
        [30, 10, 20]
    """

    def __init__(self) -> None:
        self._sorted_keys: np.ndarray | None = None
        self._sorted_ids = np.zeros(0, dtype=np.int64)
        self._new_keys: list[np.ndarray] = []
        self._counts = np.zeros(1024, dtype=np.int64)
        self.size = 0

    def add_counts(self, ids: np.ndarray, counts: np.ndarray) -> None:
        """Add ``counts`` ``[u]`` to the tallies of ``ids`` ``[u]`` (e.g. training occurrences)."""
        if self.size > len(self._counts):  # grow geometrically: amortised O(1) per new id
            grown = np.zeros(max(self.size, 2 * len(self._counts)), dtype=np.int64)
            grown[: len(self._counts)] = self._counts
            self._counts = grown
        np.add.at(self._counts, ids, counts)

    @property
    def counts(self) -> np.ndarray:
        """Tallies added so far, indexed by id: ``int64 [size]``."""
        return self._counts[: self.size].copy()

    def _probe(self, keys: np.ndarray):
        """Look ``keys`` ``[u]`` up: (sorted keys, the keys in a common dtype, their sort order, the
        sorted probes, insertion points, found mask, ids of the found ones in probe order)."""
        if self._sorted_keys is None:
            self._sorted_keys = keys[:0].copy()
        sorted_keys, keys = _common(self._sorted_keys, keys)
        # Sorted probes make searchsorted walk memory in order: ~10x faster on millions of keys.
        order = np.argsort(keys)
        probes = keys[order]
        pos = np.searchsorted(sorted_keys, probes)
        clipped = np.minimum(pos, max(len(sorted_keys) - 1, 0))
        found = sorted_keys[clipped] == probes if len(sorted_keys) else np.zeros(len(keys), dtype=bool)
        ids_sorted = np.empty(len(keys), dtype=np.int64)
        ids_sorted[found] = self._sorted_ids[clipped[found]]
        return sorted_keys, keys, order, probes, pos, found, ids_sorted

    def find(self, keys: np.ndarray, missing: int = -1) -> np.ndarray:
        """Ids of ``keys`` ``[u]`` without adding any: ``int64 [u]``, ``missing`` for keys never seen.

        Serving's lookup (:mod:`.encoder`): the same keys and comparison as :meth:`ids_for`.
        """
        _, _, order, _, _, found, ids_sorted = self._probe(keys)
        ids_sorted[~found] = missing
        ids = np.empty(len(keys), dtype=np.int64)
        ids[order] = ids_sorted
        return ids

    def ids_for(self, keys: np.ndarray) -> np.ndarray:
        """Ids of ``keys`` ``[u]`` (normally distinct), adding the unseen ones. Returns ``int64 [u]``."""
        sorted_keys, keys, order, probes, pos, found, ids_sorted = self._probe(keys)
        new = ~found
        if new.any():
            # New keys, deduplicated (a null and "" share the key of the missing value);
            # ids follow first appearance in `keys`.
            new_keys, new_pos, new_origin = probes[new], pos[new], order[new]
            starts = np.ones(len(new_keys), dtype=bool)
            starts[1:] = new_keys[1:] != new_keys[:-1]
            run = np.cumsum(starts) - 1
            distinct, at = new_keys[starts], new_pos[starts]
            first = np.minimum.reduceat(new_origin, np.flatnonzero(starts))
            by_appearance = np.argsort(first)
            new_ids = np.empty(len(distinct), dtype=np.int64)
            new_ids[by_appearance] = self.size + np.arange(len(distinct))
            ids_sorted[new] = new_ids[run]
            sorted_keys = _merge(sorted_keys, at, distinct)
            self._sorted_ids = _merge(self._sorted_ids, at, new_ids)
            self._new_keys.append(distinct[by_appearance])
            self.size += len(distinct)
        self._sorted_keys = sorted_keys
        ids = np.empty(len(keys), dtype=np.int64)
        ids[order] = ids_sorted
        return ids

    def keys_by_id(self) -> np.ndarray:
        """All keys, indexed by id: ``[size]``."""
        if not self._new_keys:
            return np.zeros(0, dtype=np.uint64) if self._sorted_keys is None else self._sorted_keys[:0]
        parts = self._new_keys
        target = self._sorted_keys
        return np.concatenate([_common(target, p)[1] for p in parts])

    def id_of(self, key: np.ndarray) -> int | None:
        """Id of one key given as a 1-element array (e.g. ``MISSING_BUCKET``), or ``None`` if never seen."""
        if self._sorted_keys is None or not len(self._sorted_keys):
            return None
        sorted_keys, probe = _common(self._sorted_keys, np.asarray(key).reshape(1))
        pos = int(np.searchsorted(sorted_keys, probe)[0])
        if pos < len(sorted_keys) and sorted_keys[pos] == probe[0]:
            return int(self._sorted_ids[pos])
        return None
