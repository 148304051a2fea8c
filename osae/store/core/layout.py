"""Open a store for writing: create its arrays, or reopen it under the writer lock to resume or append.

Both writers (the buffered `StoreWriter` and `ShardWriter`) start here, so a store is laid out and locked the
same way whichever protocol writes it. What happens after opening (rows, digests, commit record) is
`commit.py`'s job.
"""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from osae.constants import (
    ACTS_GROUP,
    DEFAULT_EVAL_FRACTION,
    LOCK_FILE,
    MIN_EVAL_ROWS,
    REMOTE_LEASE_FILE,
    SEQUENCES_GROUP,
    STORE_ATTR_KEY,
)
from osae.errors import StoreError, StoreMismatchError, UsageError
from osae.store.core.format import chunk_layout, codecs_for, new_metadata, storage_dtype
from osae.store.core.location import Location, filesystem, parse_location, zarr_store
from osae.store.core.lock import WriterLock
from osae.store.core.reader import open_group, read_metadata

SEQ_CHUNK = 65536
DEFAULT_CHUNKS_PER_SHARD = 8  # 16 MiB chunks in 128 MiB shards by default (docs/benchmarks.md, "Store layouts")
CONTEXT_CHUNK = 4096


@dataclass
class OpenedStore:
    """A store opened for writing: where it is, its root group, its metadata (to be committed) and the lock held."""

    loc: Location
    group: zarr.Group
    meta: dict
    lock: WriterLock


def row_paths(meta: dict) -> list[str]:
    """Paths of the row arrays (one row per token), in the order every writer handles them."""
    paths = [f"{ACTS_GROUP}/{h}" for h in meta["hooks"]]
    if meta["has_tokens"]:
        paths += ["tokens", "seq_id", "position"]
    return paths


def store_exists(url) -> bool:
    """Whether a store (anything but our lock file) is at `url` (a path or URL)."""
    loc = url if isinstance(url, Location) else parse_location(url)
    if loc.is_local:
        p = Path(loc.path)
        return p.exists() and any(x.name != LOCK_FILE for x in p.iterdir())
    return filesystem(loc).exists(f"{loc.url}/zarr.json")


def disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def create_store(
    url,
    *,
    hooks: dict[str, dict],
    has_tokens: bool,
    context_size: int | None = None,
    provenance: dict | None = None,
    compressor: str = "none",
    chunk_rows: int | None = None,
    chunks_per_shard: int = DEFAULT_CHUNKS_PER_SHARD,
    expected_rows: int | None = None,
    split: dict | None = None,
    overwrite: bool = False,
) -> OpenedStore:
    """Lock `url` and lay out a new, empty store there. Refuses an existing store unless `overwrite`."""
    if not hooks:
        raise UsageError("a store needs at least one hook")
    if not isinstance(chunks_per_shard, int) or chunks_per_shard < 1:
        raise UsageError(f"chunks per shard must be a positive integer; got {chunks_per_shard!r}")
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
        shard = chunk * chunks_per_shard
        split = split or {
            "rule": "hash-chunks",
            "eval_fraction": DEFAULT_EVAL_FRACTION,
            "seed": 0,
            "min_eval_rows": MIN_EVAL_ROWS,
        }
        meta = new_metadata(
            hooks=hooks,
            chunk_rows=chunk,
            shard_rows=shard,
            compressor=compressor,
            has_tokens=has_tokens,
            context_size=context_size,
            split=split,
            provenance=provenance or {},
        )
        try:
            # Not mode "w": it would clear the directory, lock file included (the store is empty here).
            group = zarr.open_group(store=zarr_store(loc, read_only=False), mode="a", zarr_format=3)
            for name, h in hooks.items():
                _create_rows(
                    group, f"{ACTS_GROUP}/{name}", (h["d_model"],), storage_dtype(h["dtype"]), chunk, shard, compressor
                )
            if has_tokens:
                _create_rows(group, "tokens", (), np.dtype("int32"), chunk, shard, compressor)
                _create_rows(group, "seq_id", (), np.dtype("int64"), chunk, shard, compressor)
                _create_rows(group, "position", (), np.dtype("int32"), chunk, shard, compressor)
                create_plain(group, f"{SEQUENCES_GROUP}/row_start", (0,), (SEQ_CHUNK,), "int64")
                if context_size:
                    create_plain(
                        group,
                        f"{SEQUENCES_GROUP}/context",
                        (0, context_size),
                        (CONTEXT_CHUNK, context_size),
                        "int32",
                        fill=-1,
                    )
            group.attrs[STORE_ATTR_KEY] = meta
        except OSError as exc:
            if disk_full(exc):
                raise StoreError(f"disk full while creating {loc.display}; free space and retry") from None
            raise
        return OpenedStore(loc, group, meta, lock)
    except BaseException:
        lock.release()
        raise


def reopen_for_append(url, *, hooks: dict[str, dict], has_tokens: bool) -> OpenedStore:
    """Lock a store (complete or not) to add rows of the same hooks, dtypes and widths; it is marked incomplete."""
    opened = _reopen(url)
    try:
        _check_same_layout(opened.loc, opened.meta, hooks, has_tokens)
        opened.meta["commit"]["complete"] = False
        opened.group.attrs[STORE_ATTR_KEY] = opened.meta
        return opened
    except BaseException:
        opened.lock.release()
        raise


def reopen_for_resume(url) -> OpenedStore:
    """Lock an interrupted store to continue it at its committed rows. Refuses a complete store."""
    opened = _reopen(url)
    if opened.meta["commit"]["complete"]:
        opened.lock.release()
        raise StoreError(f"{opened.loc.display} is complete; append to it explicitly instead of resuming")
    return opened


def _reopen(url) -> OpenedStore:
    loc = parse_location(url)
    lock = WriterLock(loc).acquire()
    try:
        group = open_group(loc, read_only=False)
        return OpenedStore(loc, group, read_metadata(group, loc), lock)
    except BaseException:
        lock.release()
        raise


def create_plain(group, path, shape, chunks, dtype, fill=0) -> None:
    """An unsharded, uncompressed array (sequences, digests): small, and rewritten in place as it grows."""
    group.create_array(
        path,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        compressors=codecs_for("none", 1),
        filters=None,
        fill_value=fill,
        config={"write_empty_chunks": True},
    )


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
