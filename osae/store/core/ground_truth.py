"""The ground truth of synthetic stores: the arrays under `ground_truth/`, and the true codes as sparse rows.

The true codes have one row per store row (training rows, then held-out rows) and are kept sparse: `code_indices`
(rows, m) int32 holds each row's active atoms in increasing order and `code_values` (rows, m) float32 their
coefficients. Stores written before this layout hold one dense `codes` (rows, K) float32 array instead;
`read_sparse_codes` reads both layouts.
"""

from __future__ import annotations

import numpy as np
import zarr

from osae.constants import GROUND_TRUTH_GROUP
from osae.errors import StoreFormatError, StoreMismatchError
from osae.store.core.format import codecs_for

CODE_INDICES = "code_indices"
CODE_VALUES = "code_values"
DENSE_CODES = "codes"  # the layout before sparse codes
MAX_CHUNK = 65536


def create_ground_truth_array(group: zarr.Group, name: str, shape: tuple[int, ...], dtype) -> zarr.Array:
    """An empty array `ground_truth/<name>`: unsharded, each dimension chunked at min(size, 65536), crc32c."""
    dtype = np.dtype(dtype)
    return group.create_array(
        f"{GROUND_TRUTH_GROUP}/{name}",
        shape=shape,
        dtype=dtype,
        chunks=tuple(min(max(1, s), MAX_CHUNK) for s in shape),
        compressors=codecs_for("none", dtype.itemsize),
        filters=None,
        fill_value=0,
        overwrite=True,
        config={"write_empty_chunks": True},  # every chunk has a file, so verify can tell a lost one
    )


class GroundTruthRows:
    """Fills ground-truth row arrays of equal length in order, from blocks of any size.

    Rows are buffered up to one zarr chunk and written a whole chunk at a time: appending a partial chunk would
    make zarr read back and rewrite that chunk on every write.
    """

    def __init__(self, arrays: dict[str, zarr.Array]):
        lengths = {a.shape[0] for a in arrays.values()}
        if len(lengths) != 1:
            raise StoreMismatchError(f"ground-truth row arrays must have one length; got {sorted(lengths)}")
        self.arrays = arrays
        self.n_rows = lengths.pop()
        self.chunk_rows = max(1, min(a.chunks[0] for a in arrays.values()))
        self.buf = {name: np.empty((self.chunk_rows, *a.shape[1:]), a.dtype) for name, a in arrays.items()}
        self.buf_start = 0  # first row held in the buffer
        self.buf_n = 0

    def write(self, rows: dict[str, np.ndarray]) -> None:
        """Append the next rows of every array (same count for each)."""
        if set(rows) != set(self.arrays):
            raise StoreMismatchError(f"ground-truth rows must cover {sorted(self.arrays)}; got {sorted(rows)}")
        n = len(next(iter(rows.values())))
        for name, a in rows.items():
            want = self.buf[name]
            if len(a) != n or a.shape[1:] != want.shape[1:] or a.dtype != want.dtype:
                raise StoreMismatchError(
                    f"ground_truth/{name}: expected {n} rows of shape {want.shape[1:]} and dtype {want.dtype}, "
                    f"got {a.shape} {a.dtype}"
                )
        if self.buf_start + self.buf_n + n > self.n_rows:
            raise StoreMismatchError(f"ground-truth rows exceed the {self.n_rows} rows the arrays were created with")
        done = 0
        while done < n:
            take = min(n - done, self.chunk_rows - self.buf_n)
            for name, a in rows.items():
                self.buf[name][self.buf_n : self.buf_n + take] = a[done : done + take]
            self.buf_n += take
            done += take
            if self.buf_n == self.chunk_rows:
                self._flush()

    def close(self) -> None:
        """Write the last partial chunk; every row must have been written."""
        self._flush()
        if self.buf_start != self.n_rows:
            raise StoreMismatchError(f"ground-truth rows: {self.buf_start} of {self.n_rows} rows were written")

    def _flush(self) -> None:
        if not self.buf_n:
            return
        stop = self.buf_start + self.buf_n
        for name, arr in self.arrays.items():
            arr[self.buf_start : stop] = self.buf[name][: self.buf_n]
        self.buf_start, self.buf_n = stop, 0


def densify(indices: np.ndarray, values: np.ndarray, n_atoms: int) -> np.ndarray:
    """(rows, n_atoms) float32 codes from sparse rows `indices`, `values` (rows, m)."""
    dense = np.zeros((len(indices), n_atoms), np.float32)
    np.put_along_axis(dense, indices.astype(np.intp), values.astype(np.float32), axis=1)
    return dense


def sparsify(dense: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The m largest-magnitude entries of each dense code row as (indices, values), indices increasing.

    Exact for rows with at most m nonzeros (a toy row has exactly m, all positive)."""
    n_atoms = dense.shape[1]
    if m >= n_atoms:
        indices = np.broadcast_to(np.arange(n_atoms), dense.shape)
    else:
        indices = np.sort(np.argpartition(-np.abs(dense), m - 1, axis=1)[:, :m], axis=1)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    return indices, np.take_along_axis(dense, indices.astype(np.intp), axis=1).astype(np.float32)


def code_layout(names: list[str]) -> str | None:
    """ "sparse", "dense" (the layout before sparse codes) or None (no true codes among the array names)."""
    if CODE_INDICES in names and CODE_VALUES in names:
        return "sparse"
    return "dense" if DENSE_CODES in names else None


def read_sparse_codes(gt: zarr.Group, names: list[str], m: int | None, start: int, stop: int):
    """True codes of rows [start, stop) as (indices (r, m) int32, values (r, m) float32), from either layout.

    A dense store's rows are sparsified to `m` entries (its recorded active count; the widest row if None)."""
    layout = code_layout(names)
    if layout == "sparse":
        return np.asarray(gt[CODE_INDICES][start:stop], np.int32), np.asarray(gt[CODE_VALUES][start:stop], np.float32)
    if layout == "dense":
        dense = np.asarray(gt[DENSE_CODES][start:stop], np.float32)
        width = m if m is not None else int((dense != 0).sum(axis=1).max(initial=1))
        return sparsify(dense, max(1, width))
    raise StoreFormatError(f"this store's ground truth has no codes (arrays: {names})")
