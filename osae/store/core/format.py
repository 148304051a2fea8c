"""The on-disk layout of an osae activation store (format version 1; docs/store-format.md).

A store is one Zarr v3 group:

    zarr.json                 attributes["osae"]: metadata + the commit record (see `new_metadata`)
    acts/<hook>               (rows, d_model)  float16 | float32 | uint16 holding bfloat16 bit patterns
    tokens, seq_id, position  (rows,) int32 / int64 / int32      only when the store has token ids
    sequences/row_start       (n_seq,) int64   first row of every sequence
    sequences/context         (n_seq, context_size) int32 the full token window, -1 = padding
    digests/<array path>      (n_chunks,) uint64 blake2b-64 of every committed chunk's raw bytes
    ground_truth/...          synthetic stores only (dictionary, sparse code indices and values, prior)

Row arrays share one chunking along rows; chunks are grouped into shards with Zarr's sharding codec
and every inner chunk carries a crc32c checksum.
"""

from __future__ import annotations

import datetime as _dt
import math

import numpy as np
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

from osae import __version__
from osae.constants import (
    CHUNKS_PER_SHARD,
    MIN_CHUNK_ROWS,
    STORE_FORMAT_VERSION,
    TARGET_CHUNK_BYTES,
)
from osae.errors import UsageError

# Logical dtype -> the dtype Zarr stores. Zarr v3 has no bfloat16: its bit pattern is kept losslessly
# as uint16 and the hook's `dtype` attribute says how to read it back.
STORAGE_DTYPES = {"float16": "float16", "float32": "float32", "bfloat16": "uint16"}
COMPRESSORS = ("none", "zstd", "lz4", "blosc-zstd")


def storage_dtype(dtype: str) -> np.dtype:
    if dtype not in STORAGE_DTYPES:
        raise UsageError(f"activation dtype must be one of {sorted(STORAGE_DTYPES)}; got {dtype!r}")
    return np.dtype(STORAGE_DTYPES[dtype])


def itemsize(dtype: str) -> int:
    return storage_dtype(dtype).itemsize


def codecs_for(compressor: str, item_bytes: int) -> list:
    """Bytes-to-bytes codecs of one inner chunk: an optional compressor, then a crc32c checksum."""
    checksum = Crc32cCodec()
    if compressor == "none":
        return [checksum]
    if compressor == "zstd":
        return [ZstdCodec(level=1), checksum]
    if compressor == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle, typesize=item_bytes), checksum]
    if compressor == "blosc-zstd":
        return [BloscCodec(cname="zstd", clevel=1, shuffle=BloscShuffle.shuffle, typesize=item_bytes), checksum]
    raise UsageError(f"compressor must be one of {list(COMPRESSORS)}; got {compressor!r}")


def chunk_layout(row_bytes: int, expected_rows: int | None = None) -> tuple[int, int]:
    """(chunk_rows, shard_rows): about 16 MiB chunks, 8 chunks a shard, powers of two.

    Small stores get smaller chunks so that the chunk-level shuffle and the evaluation split still
    have a few dozen chunks to work with.
    """
    rows = max(MIN_CHUNK_ROWS, 2 ** int(math.floor(math.log2(max(1, TARGET_CHUNK_BYTES // row_bytes)))))
    if expected_rows:
        cap = 2 ** int(math.floor(math.log2(max(MIN_CHUNK_ROWS, expected_rows // 64))))
        rows = max(MIN_CHUNK_ROWS, min(rows, cap))
    return rows, rows * CHUNKS_PER_SHARD


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_metadata(
    *,
    hooks: dict[str, dict],
    chunk_rows: int,
    shard_rows: int,
    compressor: str,
    has_tokens: bool,
    context_size: int | None,
    split: dict,
    provenance: dict,
) -> dict:
    """The `osae` attribute of a fresh, empty store."""
    return {
        "format_version": STORE_FORMAT_VERSION,
        "osae_version": __version__,
        "created": now_iso(),
        "hooks": hooks,
        "chunk_rows": chunk_rows,
        "shard_rows": shard_rows,
        "compressor": compressor,
        "checksum": "crc32c",
        "digest": "blake2b-64",
        "has_tokens": has_tokens,
        "context_size": context_size,
        "split": split,
        "provenance": provenance,
        "commit": empty_commit(hooks),
    }


def empty_commit(hooks: dict[str, dict]) -> dict:
    return {
        "n_tokens": 0,
        "n_sequences": 0,
        "complete": False,
        "updated": now_iso(),
        "stats": {
            name: {"count": 0, "sum": [0.0] * h["d_model"], "sum_sq": [0.0] * h["d_model"], "nonfinite_rows": 0}
            for name, h in hooks.items()
        },
    }


def hook_spec(layer: int | None, d_model: int, dtype: str, hook: str | None = None) -> dict:
    if d_model <= 0:
        raise UsageError(f"d_model must be positive; got {d_model}")
    storage_dtype(dtype)
    return {"layer": layer, "hook": hook, "d_model": int(d_model), "dtype": dtype}
