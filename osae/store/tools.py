"""`osae store info | verify | copy`: describe, check and move stores (the work behind those commands)."""

from __future__ import annotations

import logging

import numpy as np

from osae.constants import SEQUENCES_GROUP
from osae.errors import StoreError
from osae.progress import progress as progress_bar
from osae.store.core.buffered_writer import StoreWriter
from osae.store.core.location import filesystem
from osae.store.core.manifest import row_array_paths, store_fingerprint
from osae.store.core.reader import ActivationStore
from osae.store.core.split import split_intervals
from osae.store.integrity import check_store

log = logging.getLogger(__name__)


def stored_bytes(store: ActivationStore, paths: list[str] | None = None) -> int | None:
    """Bytes the store (or the given arrays in it) occupies; None where it cannot be listed (plain HTTP)."""
    if store.loc.protocol in ("http", "https"):
        return None
    fs = filesystem(store.loc)
    root = store.loc.path if store.loc.is_local else store.loc.url
    if paths is None:
        return int(fs.du(root, total=True))
    return sum(int(fs.du(f"{root}/{p}", total=True)) for p in paths)


def info(url) -> dict:
    """What `osae store info` shows: layout, size, split, provenance and the fingerprint."""
    store = ActivationStore(url, quiet=True)
    nbytes = 0
    for p in row_array_paths(store):
        arr = store.array(p)
        nbytes += store.n_tokens * int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
    stored = stored_bytes(store, row_array_paths(store))
    prov = store.meta.get("provenance", {})
    train, evals = split_intervals(store, "train"), split_intervals(store, "eval")
    return {
        "format_version": store.meta["format_version"],
        "location": store.loc.display,
        "n_tokens": store.n_tokens,
        "n_sequences": store.n_sequences,
        "complete": store.complete,
        "hooks": {
            k: {"layer": v.get("layer"), "hook": v.get("hook"), "d_model": v["d_model"], "dtype": v["dtype"]}
            for k, v in store.hooks.items()
        },
        "model": prov.get("model"),
        "dataset": prov.get("dataset"),
        "context_size": store.context_size,
        "has_tokens": store.has_tokens,
        "chunk_rows": store.chunk_rows,
        "shard_rows": store.shard_rows,
        "compressor": store.meta.get("compressor"),
        "nbytes": nbytes,
        "nbytes_stored": stored,
        "nbytes_total": stored_bytes(store),
        "compression_ratio": (nbytes / stored) if stored else None,
        "split": {
            "rule": store.meta["split"],
            "train_tokens": train.n_rows,
            "eval_tokens": evals.n_rows,
            # Rows of sequences that straddle a train/eval chunk boundary belong to neither (no shared context).
            "straddling_tokens": store.n_tokens - train.n_rows - evals.n_rows,
        },
        "ground_truth": store.meta.get("ground_truth"),
        "provenance": prov,
        "created": store.meta.get("created"),
        "osae_version": store.meta.get("osae_version"),
        **_fingerprint_or_reason(store),
    }


def _fingerprint_or_reason(store: ActivationStore) -> dict:
    """info shows what it can of a damaged store: the fingerprint, or why there is none."""
    try:
        return {"fingerprint": store_fingerprint(store)}
    except StoreError as exc:
        return {"fingerprint": None, "fingerprint_error": str(exc)}


def verify(url, *, progress: bool = False) -> dict:
    """Read every chunk of every array (crc32c), compare row chunks with their digests, look for NaN/Inf and check
    the recorded statistics (`osae.store.integrity`). `bad_chunks` holds one finding per bad chunk."""
    return check_store(ActivationStore(url, quiet=True), progress=progress)


def copy(
    src,
    dst,
    *,
    compressor: str | None = None,
    chunks_per_shard: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Copy the committed rows of SRC to DST (recompressing or resharding if asked; by default with SRC's
    compressor and layout), then verify DST. The chunks, and so the fingerprint, stay the same."""
    store = ActivationStore(src, quiet=True)
    meta = store.meta
    writer = StoreWriter.create(
        dst,
        hooks=meta["hooks"],
        has_tokens=store.has_tokens,
        context_size=store.context_size,
        provenance={**meta.get("provenance", {}), "copied_from": store.loc.display},
        compressor=compressor or meta.get("compressor", "none"),
        chunk_rows=store.chunk_rows,
        chunks_per_shard=chunks_per_shard or store.shard_rows // store.chunk_rows,
        split=meta["split"],
        overwrite=overwrite,
    )
    try:
        step = store.shard_rows
        bar = progress_bar(store.n_tokens, "copy", "tok", enabled=progress, unit_scale=True)
        if store.has_tokens:
            starts = store.array(f"{SEQUENCES_GROUP}/row_start")[: store.n_sequences]
            ctx = (
                store.array(f"{SEQUENCES_GROUP}/context")[: store.n_sequences]
                if f"{SEQUENCES_GROUP}/context" in store.group
                else None
            )
            writer.add_sequences(starts, ctx)
        for lo in range(0, store.n_tokens, step):
            hi = min(lo + step, store.n_tokens)
            acts = {h: store.read_acts(h, lo, hi) for h in store.hooks}
            extra = {}
            if store.has_tokens:
                extra = {k: store.read_rows(k, lo, hi) for k in ("tokens", "seq_id", "position")}
            writer.write(acts, **extra)
            bar.update(hi - lo)
        bar.close()
        if store.ground_truth() is not None:
            gt = meta["ground_truth"]
            writer.write_ground_truth(store.ground_truth(), {k: v for k, v in gt.items() if k != "arrays"})
        writer.close(complete=store.complete)
    except BaseException:
        writer.abort()
        raise
    report = verify(dst, progress=progress)
    source_fp = store_fingerprint(store)
    report["source_fingerprint"] = source_fp
    report["same_content"] = source_fp is not None and source_fp == report["fingerprint"]
    return report
