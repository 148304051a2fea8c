"""`StoreWriter`: one process appends rows in any sizes; they are buffered and committed shard by shard.

Rows are buffered one shard at a time. A full shard is written in one assignment, then committed through
`commit.CommitLog` (digests, sequences, commit record); `close` commits the last partial shard. A resumed
writer reloads the committed rows of a partial last shard into its buffer, so that shard is rewritten whole.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from osae.constants import ACTS_GROUP, GROUND_TRUTH_GROUP
from osae.errors import StoreMismatchError
from osae.store.core.commit import LockedWriter
from osae.store.core.digest import chunk_digests
from osae.store.core.ground_truth import GroundTruthRows, create_ground_truth_array
from osae.store.core.layout import (
    OpenedStore,
    reopen_for_append,
    reopen_for_resume,
)
from osae.store.core.stats import row_stats

log = logging.getLogger(__name__)

_SIDE_WORK = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osae-store-digests")


class StoreWriter(LockedWriter):
    """Appends rows to a store. Use `StoreWriter.create`, `.append` or `.resume`, then `write` and `close`."""

    def __init__(self, opened: OpenedStore):
        super().__init__(opened)
        self.hooks = self.meta["hooks"]
        self.paths, self.arrays = self.log.paths, self.log.arrays
        # The buffer holds rows [buf_start, buf_start + buf_n) of the current shard.
        committed = self.log.committed
        self.buf_start = (committed // self.shard_rows) * self.shard_rows
        self.buf = {p: np.empty((self.shard_rows, *self.arrays[p].shape[1:]), self.arrays[p].dtype) for p in self.paths}
        self.buf_n = committed - self.buf_start
        if self.buf_n:
            for p in self.paths:
                self.buf[p][: self.buf_n] = self.arrays[p][self.buf_start : committed]

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def append(cls, url, *, hooks: dict[str, dict], has_tokens: bool) -> StoreWriter:
        """Continue a store (complete or not) with more rows of the same hooks, dtypes and widths."""
        return cls(reopen_for_append(url, hooks=hooks, has_tokens=has_tokens))

    @classmethod
    def resume(cls, url) -> StoreWriter:
        """Reopen an interrupted store at its committed rows."""
        return cls(reopen_for_resume(url))

    # -- state --------------------------------------------------------------------------------
    @property
    def committed(self) -> int:
        """Rows committed (visible to readers)."""
        return self.log.committed

    @property
    def n_sequences(self) -> int:
        """Sequences begun within the committed rows."""
        return self.log.n_sequences

    @property
    def n_rows(self) -> int:
        """Rows written so far, committed or buffered."""
        return self.buf_start + self.buf_n

    # -- writing ------------------------------------------------------------------------------
    def write(self, acts: dict[str, np.ndarray], tokens=None, seq_id=None, position=None) -> None:
        """Append rows. `acts` maps every hook to (n, d_model) rows in the hook's storage dtype."""
        if set(acts) != set(self.hooks):
            raise StoreMismatchError(f"rows must cover hooks {sorted(self.hooks)}; got {sorted(acts)}")
        n = len(next(iter(acts.values())))
        pieces = {f"{ACTS_GROUP}/{h}": np.asarray(a) for h, a in acts.items()}
        if self.meta["has_tokens"]:
            if tokens is None or seq_id is None or position is None:
                raise StoreMismatchError(f"{self.loc.display} stores token ids: pass tokens, seq_id and position")
            pieces.update(tokens=np.asarray(tokens), seq_id=np.asarray(seq_id), position=np.asarray(position))
        for p, a in pieces.items():
            want = self.buf[p]
            if len(a) != n or a.shape[1:] != want.shape[1:]:
                raise StoreMismatchError(f"{p}: expected {n} rows of shape {want.shape[1:]}, got {a.shape}")
            if a.dtype != want.dtype:
                raise StoreMismatchError(f"{p}: expected dtype {want.dtype}, got {a.dtype}")
        done = 0
        while done < n:
            take = min(n - done, self.shard_rows - self.buf_n)
            for p, a in pieces.items():
                self.buf[p][self.buf_n : self.buf_n + take] = a[done : done + take]
            self.buf_n += take
            done += take
            if self.buf_n == self.shard_rows:
                self._flush_and_commit()

    def add_sequences(self, row_start: np.ndarray, context: np.ndarray | None = None) -> None:
        """Record the first row (and the token window) of sequences whose rows are being written, in order."""
        self.log.add_sequences(row_start, context)

    def commit_metadata(self) -> None:
        """Commit a change made to `meta` (e.g. its provenance), with the rows committed so far."""
        try:
            self.log.write_record()
        except OSError as exc:
            raise self.log.os_error(exc) from None

    def ground_truth_rows(self, arrays: dict[str, tuple[tuple[int, ...], str]]) -> GroundTruthRows:
        """Create ground-truth row arrays (name -> (shape, dtype)), e.g. the toy's sparse codes, to be filled
        block by block through the returned writer; close it before `write_ground_truth`."""
        return GroundTruthRows(
            {name: create_ground_truth_array(self.group, name, shape, dtype) for name, (shape, dtype) in arrays.items()}
        )

    def write_ground_truth(self, arrays: dict[str, np.ndarray], info: dict | None = None) -> None:
        """Store a synthetic store's ground truth (e.g. `dictionary` (K, d), `prior` (K,)) and record it, with the
        arrays written earlier through `ground_truth_rows`, in the metadata."""
        for name, value in arrays.items():
            value = np.ascontiguousarray(value)
            create_ground_truth_array(self.group, name, value.shape, value.dtype)[...] = value
        names = sorted(self.group[GROUND_TRUTH_GROUP].array_keys()) if GROUND_TRUTH_GROUP in self.group else []
        self.meta["ground_truth"] = {"arrays": names, **(info or {})}
        self.commit_metadata()

    def _flush(self) -> None:
        if self.buf_n:
            self._flush_and_commit()

    # -- internals ----------------------------------------------------------------------------
    def _flush_and_commit(self) -> None:
        start, stop = self.buf_start, self.buf_start + self.buf_n
        # Digests and statistics only read the buffer, so they are computed on a second thread while zarr
        # encodes and writes the shard (hashing and numpy release the GIL): a pure-I/O writer, such as an
        # import, was measured spending as long on them as on the write itself.
        side = _SIDE_WORK.submit(self._digests_and_stats, start, stop, self.log.committed)
        try:
            self.log.grow(stop)
            for p in self.paths:
                self.arrays[p][start:stop] = self.buf[p][: self.buf_n]
            digests, stats = side.result()
            self.log.commit_rows(stop, [(start // self.chunk_rows, digests)], [stats])
        except OSError as exc:
            raise self.log.os_error(exc) from None
        finally:
            wait([side])  # never leave the thread reading a buffer that is about to be refilled
        if self.buf_n == self.shard_rows:
            self.buf_start += self.shard_rows
            self.buf_n = 0

    def _digests_and_stats(self, start: int, stop: int, committed: int) -> tuple[dict, dict]:
        """Chunk digests of rows [start, stop) per row array, and statistics of the rows new since `committed`."""
        digests = {p: chunk_digests(self.buf[p][: stop - start], self.chunk_rows) for p in self.paths}
        stats = {
            h: row_stats(
                self.buf[f"{ACTS_GROUP}/{h}"][committed - start : stop - start], spec["dtype"], self.chunk_rows
            )
            for h, spec in self.hooks.items()
        }
        return digests, stats
