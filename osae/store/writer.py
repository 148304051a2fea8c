"""Write an activation store: append rows, commit whole shards, resume after any crash.

Commit protocol. Rows are buffered one shard at a time. A full shard is written (one assignment per shard:
partial-shard writes from several writers were measured to lose chunks), then its chunk digests, and only
then the commit record in the root attributes advances `n_tokens`. Every file write is atomic (zarr's
local store writes a temporary file and renames it; an S3 put is atomic), so after a crash, a kill or a
full disk the store holds exactly its committed rows plus, possibly, unreferenced rows beyond them.
"""

from __future__ import annotations

import errno
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import zarr

from osae.constants import (
    ACTS_GROUP,
    DEFAULT_EVAL_FRACTION,
    DIGESTS_GROUP,
    GROUND_TRUTH_GROUP,
    LOCK_FILE,
    REMOTE_LEASE_FILE,
    SEQUENCES_GROUP,
    STORE_ATTR_KEY,
)
from osae.errors import StoreError, StoreMismatchError
from osae.store.digest import chunk_digests
from osae.store.format import (
    chunk_layout,
    codecs_for,
    new_metadata,
    now_iso,
    storage_dtype,
)
from osae.store.location import Location, filesystem, parse_location, zarr_store
from osae.store.lock import WriterLock
from osae.store.reader import open_group, read_metadata, to_float32

log = logging.getLogger(__name__)

SEQ_CHUNK = 65536
_SIDE_WORK = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osae-store-digests")
CONTEXT_CHUNK = 4096
DIGEST_CHUNK = 65536


def store_exists(loc: Location) -> bool:
    if loc.is_local:
        p = Path(loc.path)
        return p.exists() and any(x.name != LOCK_FILE for x in p.iterdir())
    return filesystem(loc).exists(f"{loc.url}/zarr.json")


def _disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class StoreWriter:
    """Appends rows to a store. Use `StoreWriter.create`, `.append` or `.resume`, then `write` and `close`."""

    def __init__(self, loc: Location, group: zarr.Group, meta: dict, lock: WriterLock):
        self.loc = loc
        self.group = group
        self.meta = meta
        self.lock = lock
        self.chunk_rows = int(meta["chunk_rows"])
        self.shard_rows = int(meta["shard_rows"])
        self.hooks = meta["hooks"]
        self.paths = [f"{ACTS_GROUP}/{h}" for h in self.hooks]
        if meta["has_tokens"]:
            self.paths += ["tokens", "seq_id", "position"]
        self.arrays = {p: group[p] for p in self.paths}
        self.committed = int(meta["commit"]["n_tokens"])
        self.n_sequences = int(meta["commit"]["n_sequences"])
        self._seq_row_start: list[np.ndarray] = []
        self._seq_context: list[np.ndarray] = []
        self._seq_written = self.n_sequences
        # First rows of sequences recorded but not yet begun within the committed rows.
        self._unbegun_starts = np.empty(0, np.int64)
        self._stats = {h: {k: (np.asarray(v, np.float64) if isinstance(v, list) else v) for k, v in s.items()}
                       for h, s in meta["commit"]["stats"].items()}
        # The buffer holds rows [buf_start, buf_start + buf_n) of the current shard.
        self.buf_start = (self.committed // self.shard_rows) * self.shard_rows
        self.buf = {p: np.empty((self.shard_rows, *self.arrays[p].shape[1:]), self.arrays[p].dtype) for p in self.paths}
        self.buf_n = self.committed - self.buf_start
        if self.buf_n:
            for p in self.paths:
                self.buf[p][: self.buf_n] = self.arrays[p][self.buf_start : self.committed]
        self.closed = False

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        url,
        *,
        hooks: dict[str, dict],
        has_tokens: bool,
        context_size: int | None = None,
        provenance: dict | None = None,
        compressor: str = "none",
        chunk_rows: int | None = None,
        expected_rows: int | None = None,
        split: dict | None = None,
        overwrite: bool = False,
    ) -> "StoreWriter":
        """A new, empty store. Refuses an existing store unless `overwrite`."""
        if not hooks:
            raise ValueError("a store needs at least one hook")
        loc = parse_location(url)
        lock = WriterLock(loc).acquire()
        try:
            if store_exists(loc):
                if not overwrite:
                    raise StoreError(f"{loc.display} already exists; pass --overwrite to replace it")
                _remove_store(loc)
            row_bytes = max(h["d_model"] * storage_dtype(h["dtype"]).itemsize for h in hooks.values())
            auto_chunk, _ = chunk_layout(row_bytes, expected_rows)
            chunk = int(chunk_rows or auto_chunk)
            shard = chunk * 8
            split = split or {"rule": "hash-chunks", "eval_fraction": DEFAULT_EVAL_FRACTION, "seed": 0}
            meta = new_metadata(
                hooks=hooks, chunk_rows=chunk, shard_rows=shard, compressor=compressor,
                has_tokens=has_tokens, context_size=context_size, split=split, provenance=provenance or {},
            )
            try:
                # Not mode "w": it would clear the directory, lock file included (the store is empty here).
                group = zarr.open_group(store=zarr_store(loc, read_only=False), mode="a", zarr_format=3)
                for name, h in hooks.items():
                    _create_rows(group, f"{ACTS_GROUP}/{name}", (h["d_model"],), storage_dtype(h["dtype"]), chunk, shard, compressor)
                if has_tokens:
                    _create_rows(group, "tokens", (), np.dtype("int32"), chunk, shard, compressor)
                    _create_rows(group, "seq_id", (), np.dtype("int64"), chunk, shard, compressor)
                    _create_rows(group, "position", (), np.dtype("int32"), chunk, shard, compressor)
                    _create_plain(group, f"{SEQUENCES_GROUP}/row_start", (0,), (SEQ_CHUNK,), "int64")
                    if context_size:
                        _create_plain(group, f"{SEQUENCES_GROUP}/context", (0, context_size), (CONTEXT_CHUNK, context_size), "int32", fill=-1)
                group.attrs[STORE_ATTR_KEY] = meta
            except OSError as exc:
                if _disk_full(exc):
                    raise StoreError(f"disk full while creating {loc.display}; free space and retry") from None
                raise
            return cls(loc, group, meta, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def append(cls, url, *, hooks: dict[str, dict], has_tokens: bool) -> "StoreWriter":
        """Continue a store (complete or not) with more rows of the same hooks, dtypes and widths."""
        loc = parse_location(url)
        lock = WriterLock(loc).acquire()
        try:
            group = open_group(loc, read_only=False)
            meta = read_metadata(group, loc)
            _check_same_layout(loc, meta, hooks, has_tokens)
            meta["commit"]["complete"] = False
            group.attrs[STORE_ATTR_KEY] = meta
            return cls(loc, group, meta, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def resume(cls, url) -> "StoreWriter":
        """Reopen an interrupted store at its committed rows."""
        loc = parse_location(url)
        lock = WriterLock(loc).acquire()
        try:
            group = open_group(loc, read_only=False)
            meta = read_metadata(group, loc)
            if meta["commit"]["complete"]:
                raise StoreError(f"{loc.display} is complete; append to it explicitly instead of resuming")
            return cls(loc, group, meta, lock)
        except BaseException:
            lock.release()
            raise

    # -- writing ------------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        """Rows written so far, committed or buffered."""
        return self.buf_start + self.buf_n

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
        self._seq_row_start.append(np.asarray(row_start, np.int64))
        if context is not None:
            self._seq_context.append(np.asarray(context, np.int32))

    def write_ground_truth(self, arrays: dict[str, np.ndarray], info: dict | None = None) -> None:
        """Store a synthetic store's ground truth (e.g. `dictionary` (K, d), `frequencies` (K,))."""
        for name, value in arrays.items():
            value = np.ascontiguousarray(value)
            chunks = tuple(min(max(1, s), 65536) for s in value.shape)
            arr = self.group.create_array(
                f"{GROUND_TRUTH_GROUP}/{name}", shape=value.shape, dtype=value.dtype, chunks=chunks,
                compressors=codecs_for("none", value.dtype.itemsize), filters=None, fill_value=0, overwrite=True,
            )
            arr[...] = value
        self.meta["ground_truth"] = {"arrays": sorted(arrays), **(info or {})}
        self._write_commit()

    def close(self, complete: bool = True) -> None:
        """Write the buffered rows, commit them, and mark the store complete (shrinking it to its rows)."""
        if self.closed:
            return
        try:
            if self.buf_n:
                self._flush_and_commit()
            if complete:
                for p in self.paths:
                    arr = self.arrays[p]
                    arr.resize((self.committed, *arr.shape[1:]))
                self.meta["commit"]["complete"] = True
                self._write_commit()
        except OSError as exc:
            raise self._os_error(exc) from None
        finally:
            self.closed = True
            self.lock.release()

    def abort(self) -> None:
        """Stop without committing buffered rows (the committed ones stay)."""
        if not self.closed:
            self.closed = True
            self.lock.release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals ----------------------------------------------------------------------------
    def _os_error(self, exc: OSError) -> Exception:
        if _disk_full(exc):
            return StoreError(
                f"disk full while writing {self.loc.display}; its {self.committed} committed rows are intact: "
                f"free space and re-run to resume"
            )
        return exc

    def _flush_and_commit(self) -> None:
        start, stop = self.buf_start, self.buf_start + self.buf_n
        # Digests and statistics only read the buffer, so they are computed on a second thread while zarr
        # encodes and writes the shard (hashing and numpy release the GIL): a pure-I/O writer, such as an
        # import, was measured spending as long on them as on the write itself.
        side = _SIDE_WORK.submit(self._digests_and_stats, start, stop, self.committed)
        try:
            for p in self.paths:
                arr = self.arrays[p]
                cap = -(-stop // self.shard_rows) * self.shard_rows
                if arr.shape[0] < cap:
                    arr.resize((cap, *arr.shape[1:]))
                arr[start:stop] = self.buf[p][: self.buf_n]
            digests, stats = side.result()
            self._write_digests(start, stop, digests)
            self._write_sequences()
            for h, st in stats.items():
                merge_stats(self._stats[h], st)
            self.committed = stop
            self._write_commit()
        except OSError as exc:
            raise self._os_error(exc) from None
        finally:
            wait([side])  # never leave the thread reading a buffer that is about to be refilled
        if self.buf_n == self.shard_rows:
            self.buf_start += self.shard_rows
            self.buf_n = 0

    def _digests_and_stats(self, start: int, stop: int, committed: int) -> tuple[dict, dict]:
        """Chunk digests of rows [start, stop) per row array, and statistics of the rows new since `committed`."""
        digests = {p: chunk_digests(self.buf[p][: stop - start], self.chunk_rows) for p in self.paths}
        stats = {h: row_stats(self.buf[f"{ACTS_GROUP}/{h}"][committed - start : stop - start], spec["dtype"], self.chunk_rows)
                 for h, spec in self.hooks.items()}
        return digests, stats

    def _write_digests(self, start: int, stop: int, digests: dict[str, np.ndarray]) -> None:
        """Digests of the full chunks go to digests/<path>; a partial last chunk's digest goes into the
        commit record itself, so it always describes exactly the committed rows, even after a crash."""
        first_chunk = start // self.chunk_rows
        n_full = (stop - start) // self.chunk_rows
        tail = {}
        for p in self.paths:
            if len(digests[p]) > n_full:
                tail[p] = str(int(digests[p][n_full]))
            self._put_digests(p, first_chunk, digests[p][:n_full])
        self.meta["commit"]["tail_digests"] = tail

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

    # -- shard-level writing, for several processes writing disjoint shards --------------------
    def reserve(self, n_rows: int) -> None:
        """Size every row array for `n_rows` rows, so that other processes can write whole shards."""
        cap = -(-n_rows // self.shard_rows) * self.shard_rows
        for p in self.paths:
            arr = self.arrays[p]
            if arr.shape[0] < cap:
                arr.resize((cap, *arr.shape[1:]))

    def commit_shards(self, n_tokens: int, payloads: list[dict]) -> None:
        """Commit rows [0, n_tokens) written shard by shard (see `write_shard`), given every new shard's payload."""
        try:
            for pay in sorted(payloads, key=lambda p: p["shard"]):
                first_chunk = pay["shard"] * self.shard_rows // self.chunk_rows
                for p, digests in pay["digests"].items():
                    n_full = min(len(digests), (n_tokens // self.chunk_rows) - first_chunk)
                    self._put_digests(p, first_chunk, digests[:n_full])
                    if n_full < len(digests):
                        self.meta["commit"]["tail_digests"] = {
                            **self.meta["commit"].get("tail_digests", {}), p: str(int(digests[n_full]))}
                for h, st in pay["stats"].items():
                    merge_stats(self._stats[h], st)
                if pay.get("seq_starts") is not None and len(pay["seq_starts"]):
                    self.add_sequences(pay["seq_starts"], pay.get("seq_context"))
            if n_tokens % self.chunk_rows == 0:
                self.meta["commit"]["tail_digests"] = {}
            self._write_sequences()
            self.committed = n_tokens
            self.buf_start = (n_tokens // self.shard_rows) * self.shard_rows
            self.buf_n = 0
            self._write_commit()
        except OSError as exc:
            raise self._os_error(exc) from None

    def _put_digests(self, p: str, first_chunk: int, digests: np.ndarray) -> None:
        if len(digests) == 0:
            return
        path = f"{DIGESTS_GROUP}/{p}"
        if path not in self.group:
            _create_plain(self.group, path, (0,), (DIGEST_CHUNK,), "uint64")
        arr = self.group[path]
        need = first_chunk + len(digests)
        if arr.shape[0] < need:
            arr.resize((need,))
        arr[first_chunk:need] = digests

    def _write_commit(self) -> None:
        commit = self.meta["commit"]
        commit["n_tokens"] = int(self.committed)
        begun = int(np.searchsorted(self._unbegun_starts, self.committed, side="left"))
        self.n_sequences += begun
        self._unbegun_starts = self._unbegun_starts[begun:]
        # A store without token ids treats every row as its own sequence.
        commit["n_sequences"] = int(self.n_sequences if self.meta["has_tokens"] else self.committed)
        commit["updated"] = now_iso()
        commit["stats"] = {
            h: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()} for h, s in self._stats.items()
        }
        self.group.attrs[STORE_ATTR_KEY] = self.meta


def _create_rows(group, path, tail_shape, dtype, chunk, shard, compressor) -> None:
    group.create_array(
        path,
        shape=(0, *tail_shape),
        dtype=dtype,
        chunks=(chunk, *tail_shape),
        shards=(shard, *tail_shape),
        compressors=codecs_for(compressor, dtype.itemsize),
        filters=None,
        fill_value=0,
        config={"write_empty_chunks": True},
    )


def _create_plain(group, path, shape, chunks, dtype, fill=0) -> None:
    group.create_array(
        path, shape=shape, dtype=dtype, chunks=chunks, compressors=codecs_for("none", 1),
        filters=None, fill_value=fill, config={"write_empty_chunks": True},
    )


def _check_same_layout(loc: Location, meta: dict, hooks: dict[str, dict], has_tokens: bool) -> None:
    have = meta["hooks"]
    if set(have) != set(hooks):
        raise StoreMismatchError(f"{loc.display} holds hooks {sorted(have)}; the append has {sorted(hooks)}")
    for name, h in hooks.items():
        for key in ("d_model", "dtype"):
            if have[name][key] != h[key]:
                raise StoreMismatchError(
                    f"{loc.display} hook '{name}' has {key}={have[name][key]}; the append has {key}={h[key]}"
                )
    if bool(meta["has_tokens"]) != bool(has_tokens):
        want = "with" if meta["has_tokens"] else "without"
        raise StoreMismatchError(f"{loc.display} was written {want} token ids; the append must be too")


def _remove_store(loc: Location) -> None:
    if loc.is_local:
        for child in Path(loc.path).iterdir():
            if child.name == LOCK_FILE:
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        # Keep our own lease: removing it with the store would let a second writer in while we write.
        fs = filesystem(loc)
        for child in fs.ls(loc.url, detail=False):
            if child.rstrip("/").rsplit("/", 1)[-1] != REMOTE_LEASE_FILE:
                fs.rm(child, recursive=True)


def row_stats(rows: np.ndarray, dtype: str, block: int = 16384) -> dict:
    """Per-dimension sums of finite rows (float64), their count, and how many rows were not finite."""
    d = rows.shape[1]
    out = {"count": 0, "sum": np.zeros(d), "sum_sq": np.zeros(d), "nonfinite_rows": 0}
    for i in range(0, len(rows), block):
        x = to_float32(rows[i : i + block], dtype).astype(np.float64)
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            out["nonfinite_rows"] += int((~finite).sum())
            x = x[finite]
        out["count"] += len(x)
        out["sum"] += x.sum(axis=0)
        out["sum_sq"] += np.einsum("nd,nd->d", x, x)
    return out


def merge_stats(into: dict, add: dict) -> None:
    for key in ("count", "nonfinite_rows"):
        into[key] += add[key]
    for key in ("sum", "sum_sq"):
        into[key] = np.asarray(into[key], np.float64) + np.asarray(add[key], np.float64)


def write_shard(group: zarr.Group, meta: dict, shard: int, rows: dict[str, np.ndarray]) -> dict:
    """Write whole shard `shard` of every row array (rows given per array path, at most one shard each)
    and return its payload for `StoreWriter.commit_shards`: chunk digests and statistics.

    Writers in different processes may call this at once for different shards: each shard file is
    written in one assignment by one process (measured safe; partial shards are not)."""
    shard_rows, chunk_rows = int(meta["shard_rows"]), int(meta["chunk_rows"])
    start = shard * shard_rows
    payload = {"shard": shard, "digests": {}, "stats": {}}
    try:
        for p, data in rows.items():
            group[p][start : start + len(data)] = data
            payload["digests"][p] = chunk_digests(data, chunk_rows)
            if p.startswith(f"{ACTS_GROUP}/"):
                hook = p.split("/", 1)[1]
                payload["stats"][hook] = row_stats(data, meta["hooks"][hook]["dtype"], chunk_rows)
    except OSError as exc:
        if _disk_full(exc):
            raise StoreError(f"disk full while writing shard {shard}; committed rows are intact: free space and "
                             f"re-run to resume") from None
        raise
    return payload
