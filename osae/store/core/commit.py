"""The commit protocol, the one way any writer makes rows visible to readers.

A commit of rows [0, n) happens in this order: the rows themselves (written by the caller, whole shards
only: partial-shard writes from several writers were measured to lose chunks), then their chunk digests,
the new sequences, and last the commit record in the root attributes, which advances `n_tokens`. Every
file write is atomic (zarr's local store writes a temporary file and renames it; an S3 put is atomic), so
after a crash, a kill or a full disk the store holds exactly its committed rows plus, possibly,
unreferenced rows beyond them, and readers (which trust `n_tokens` only) never see a half-written row.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from osae import faults
from osae.constants import DIGESTS_GROUP, SEQUENCES_GROUP, STORE_ATTR_KEY
from osae.errors import StoreError, UsageError
from osae.store.core.format import now_iso
from osae.store.core.layout import OpenedStore, create_plain, create_store, disk_full, row_paths
from osae.store.core.stats import merge_stats

DIGEST_CHUNK = 65536
KILL_POINT = "store-commit"  # osae.faults: tests SIGKILL a writer right after its N-th durable commit record


class CommitLog:
    """The commit record of a store open for writing, and the bookkeeping that goes into it.

    Holds the committed row count, the running statistics, and the sequences recorded but not yet
    written. `commit_rows` is the protocol above; `write_record` alone commits a metadata change.
    """

    def __init__(self, opened: OpenedStore):
        self.loc = opened.loc
        self.group = opened.group
        self.meta = opened.meta
        self.chunk_rows = int(self.meta["chunk_rows"])
        self.shard_rows = int(self.meta["shard_rows"])
        self.paths = row_paths(self.meta)
        self.arrays = {p: self.group[p] for p in self.paths}
        commit = self.meta["commit"]
        self.committed = int(commit["n_tokens"])
        self.n_sequences = int(commit["n_sequences"])
        self._stats = {
            h: {k: (np.asarray(v, np.float64) if isinstance(v, list) else v) for k, v in s.items()}
            for h, s in commit["stats"].items()
        }
        self._seq_row_start: list[np.ndarray] = []
        self._seq_context: list[np.ndarray] = []
        self._seq_written = self.n_sequences
        # First rows of sequences already written to sequences/* but not yet begun within the committed rows.
        self._unbegun_starts = np.empty(0, np.int64)

    # -- before a commit ------------------------------------------------------------------------
    def add_sequences(self, row_start: np.ndarray, context: np.ndarray | None = None) -> None:
        """Record the first row (and the token window) of sequences, in order; written with the next commit."""
        window = self.meta.get("context_size")
        if window and (context is None or np.shape(context) != (len(row_start), window)):
            # verify would later find the windows array short of the sequences: refuse it now
            got = "none" if context is None else f"shape {np.shape(context)}"
            raise UsageError(
                f"this store keeps a token window of {window} positions per sequence: pass add_sequences a "
                f"({len(row_start)}, {window}) array of windows (got {got}), or create it with context_size=None"
            )
        self._seq_row_start.append(np.asarray(row_start, np.int64))
        if context is not None:
            self._seq_context.append(np.asarray(context, np.int32))

    def grow(self, n_rows: int) -> None:
        """Size every row array for at least `n_rows` rows, in whole shards."""
        cap = -(-n_rows // self.shard_rows) * self.shard_rows
        for arr in self.arrays.values():
            if arr.shape[0] < cap:
                arr.resize((cap, *arr.shape[1:]))

    # -- committing ----------------------------------------------------------------------------
    def commit_rows(
        self, n_tokens: int, digests: Iterable[tuple[int, dict[str, np.ndarray]]], stats: Iterable[dict[str, dict]]
    ) -> None:
        """Commit rows [0, n_tokens), already written: `digests` holds (first chunk, {array path: digests of
        consecutive chunks from there}) for every chunk written since the last commit, `stats` the statistics
        of the rows new since then, per hook."""
        last_full = n_tokens // self.chunk_rows
        partial = n_tokens % self.chunk_rows != 0
        # Full chunks' digests go to digests/<path>; a partial last chunk's digest goes into the commit record
        # itself, so it always describes exactly the committed rows, even after a crash.
        tail = {}
        for first_chunk, per_path in digests:
            for p, d in per_path.items():
                n_full = max(0, min(len(d), last_full - first_chunk))
                self._put_digests(p, first_chunk, d[:n_full])
                if partial and n_full < len(d) and first_chunk + n_full == last_full:
                    tail[p] = str(int(d[n_full]))
        self.meta["commit"]["tail_digests"] = tail
        for per_hook in stats:
            for h, st in per_hook.items():
                merge_stats(self._stats[h], st)
        self._write_sequences()
        self.committed = n_tokens
        self.write_record()

    def finish(self) -> None:
        """Shrink the row arrays to the committed rows and commit the store as complete."""
        for arr in self.arrays.values():
            arr.resize((self.committed, *arr.shape[1:]))
        self.meta["commit"]["complete"] = True
        self.write_record()

    def write_record(self) -> None:
        """Write the commit record (row and sequence counts, statistics) and the metadata it lives in."""
        commit = self.meta["commit"]
        commit["n_tokens"] = int(self.committed)
        begun = int(np.searchsorted(self._unbegun_starts, self.committed, side="left"))
        self.n_sequences += begun
        self._unbegun_starts = self._unbegun_starts[begun:]
        # A store without token ids treats every row as its own sequence.
        commit["n_sequences"] = int(self.n_sequences if self.meta["has_tokens"] else self.committed)
        commit["updated"] = now_iso()
        commit["stats"] = {
            h: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
            for h, s in self._stats.items()
        }
        self.group.attrs[STORE_ATTR_KEY] = self.meta
        faults.reached(KILL_POINT)

    def os_error(self, exc: OSError) -> Exception:
        """The error to raise for a failed write: a one-line StoreError for a full disk, else `exc` itself."""
        if disk_full(exc):
            return StoreError(
                f"disk full while writing {self.loc.display}; its {self.committed} committed rows are intact: "
                f"free space and re-run to resume"
            )
        return exc

    # -- internals ----------------------------------------------------------------------------
    def _put_digests(self, p: str, first_chunk: int, digests: np.ndarray) -> None:
        if len(digests) == 0:
            return
        path = f"{DIGESTS_GROUP}/{p}"
        if path not in self.group:
            create_plain(self.group, path, (0,), (DIGEST_CHUNK,), "uint64")
        arr = self.group[path]
        need = first_chunk + len(digests)
        if arr.shape[0] < need:
            arr.resize((need,))
        arr[first_chunk:need] = digests

    def _write_sequences(self) -> None:
        if not self._seq_row_start:
            return
        starts = np.concatenate(self._seq_row_start)
        a = self.group[f"{SEQUENCES_GROUP}/row_start"]
        lo, hi = self._seq_written, self._seq_written + len(starts)
        if a.shape[0] < hi:
            a.resize((hi,))
        a[lo:hi] = starts
        if self._seq_context:
            ctx = np.concatenate(self._seq_context)
            c = self.group[f"{SEQUENCES_GROUP}/context"]
            if c.shape[0] < hi:
                c.resize((hi, c.shape[1]))
            c[lo:hi] = ctx
        self._seq_written = hi
        self._seq_row_start, self._seq_context = [], []
        self._unbegun_starts = np.concatenate([self._unbegun_starts, starts])


class LockedWriter:
    """What both writers share: opening a store (created or reopened, with its writer lock), the commit log,
    and closing it; `with` closes the store on success and on an error keeps only its commits. Subclasses
    extend `__init__` and write pending rows in `_flush`."""

    def __init__(self, opened: OpenedStore):
        self.loc, self.group, self.meta, self.lock = opened.loc, opened.group, opened.meta, opened.lock
        self.log = CommitLog(opened)
        self.chunk_rows, self.shard_rows = self.log.chunk_rows, self.log.shard_rows
        self.closed = False

    @classmethod
    def create(cls, url, **layout):
        """A new, empty store at `url`; `layout` is what `create_store` takes (hooks, has_tokens, context_size,
        provenance, compressor, chunk_rows, expected_rows, split, overwrite). Refuses an existing store unless
        `overwrite`."""
        return cls(create_store(url, **layout))

    def _flush(self) -> None:
        """Commit whatever the writer still holds (nothing by default)."""

    def close(self, complete: bool = True) -> None:
        """Commit what is pending, mark the store complete (shrinking it to its committed rows), release the lock."""
        if self.closed:
            return
        try:
            self._flush()
            if complete:
                self.log.finish()
        except OSError as exc:
            raise self.log.os_error(exc) from None
        finally:
            self.closed = True
            self.lock.release()

    def abort(self) -> None:
        """Stop without committing anything more (the committed rows stay) and release the lock."""
        if not self.closed:
            self.closed = True
            self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
