"""The store format core: what is on disk and how it is read and written safely.

- `format`: the layout and metadata of format version 1 (dtypes, codecs, chunk sizes).
- `location`: where a store lives (local path or fsspec URL) and the zarr store object for it.
- `reader`: `ActivationStore`, a read-only view of the committed rows.
- `split`: the held-out evaluation split (whole chunks, whole sequences).
- `normalize`: activation normalization from the store's running statistics.
- `direct`: local uncompressed chunks read straight into a caller's buffer.
- `digest`: chunk digests and the fingerprint hash; `manifest`: a store's digests and fingerprint.
- `lock`: one writer at a time (flock locally, a lease on object stores).
- `layout`: create a store's arrays, or reopen it under the lock.
- `stats`: running per-dimension statistics.
- `commit`: the one commit protocol (rows, then digests, then the commit record).
- `buffered_writer`: `StoreWriter`, rows appended in any sizes; `shard_writer`: `ShardWriter` / `ShardSink`,
  whole shards written by several processes and committed by one.

Code outside `osae.store` uses the names `osae.store` exports, not these modules.
"""
