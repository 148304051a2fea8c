"""The shard protocol harvest uses: whole shards written by several sinks, committed by one ShardWriter."""

import numpy as np
import pytest

from osae.errors import StoreError
from osae.store import ActivationStore, ShardSink, ShardWriter, StoreWriter, hook_spec, store_fingerprint, verify_store

from .helpers import HOOK, random_rows

CHUNK, SHARD = 256, 2048


def _rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"acts/{HOOK}": random_rows(rng, n, 8, "float16"),
        "tokens": np.arange(n, dtype=np.int32),
        "seq_id": (np.arange(n) // 10).astype(np.int64),
        "position": (np.arange(n) % 10).astype(np.int32),
    }


def _create(path, writer_type):
    return writer_type.create(
        path,
        hooks={HOOK: hook_spec(3, 8, "float16")},
        has_tokens=True,
        context_size=10,
        chunk_rows=CHUNK,
        split={"rule": "hash-chunks", "eval_fraction": 0.1, "seed": 0},
    )


def _shard(rows, k, n):
    lo, hi = k * SHARD, min((k + 1) * SHARD, n)
    starts = np.arange(-(-lo // 10) * 10, hi, 10, dtype=np.int64)
    return {p: a[lo:hi] for p, a in rows.items()}, starts, np.tile(np.arange(10, dtype=np.int32), (len(starts), 1))


def test_shards_from_several_sinks_make_the_store_one_buffered_writer_makes(tmp_path):
    n = 3 * SHARD + 700  # a short last shard, ending inside a chunk
    rows = _rows(n)
    writer = _create(tmp_path / "shards.zarr", ShardWriter)
    writer.reserve(n)
    sinks = [writer.sink(), ShardSink.open(tmp_path / "shards.zarr")]  # rank 0's own, and another process's
    payloads = []
    for k in (1, 0):  # a round's shards arrive in any order
        data, starts, ctx = _shard(rows, k, n)
        payloads.append(sinks[k % 2].write_shard(k, data, seq_starts=starts, seq_context=ctx))
    assert ActivationStore(tmp_path / "shards.zarr", quiet=True).n_tokens == 0  # written, not committed
    writer.commit_shards(2 * SHARD, payloads)
    assert ActivationStore(tmp_path / "shards.zarr", quiet=True).n_tokens == 2 * SHARD
    payloads = []
    for k in (2, 3):
        data, starts, ctx = _shard(rows, k, n)
        payloads.append(sinks[k % 2].write_shard(k, data, seq_starts=starts, seq_context=ctx))
    writer.commit_shards(n, payloads)
    writer.close()

    buffered = _create(tmp_path / "buffered.zarr", StoreWriter)
    buffered.add_sequences(np.arange(0, n, 10), np.tile(np.arange(10, dtype=np.int32), (-(-n // 10), 1)))
    buffered.write(
        {HOOK: rows[f"acts/{HOOK}"]}, tokens=rows["tokens"], seq_id=rows["seq_id"], position=rows["position"]
    )
    buffered.close()

    a, b = ActivationStore(tmp_path / "shards.zarr"), ActivationStore(tmp_path / "buffered.zarr")
    assert a.complete and a.n_tokens == n and a.n_sequences == b.n_sequences == -(-n // 10)
    assert store_fingerprint(a) == store_fingerprint(b) is not None
    assert a.commit["stats"] == b.commit["stats"]
    np.testing.assert_array_equal(a.sequence_starts(), b.sequence_starts())
    np.testing.assert_array_equal(a.array("sequences/context")[:], b.array("sequences/context")[:])
    assert verify_store(tmp_path / "shards.zarr")["ok"]


def test_a_resumed_shard_writer_continues_at_its_committed_shards(tmp_path):
    n = 2 * SHARD
    rows = _rows(n, seed=1)
    writer = _create(tmp_path / "s.zarr", ShardWriter)
    writer.reserve(n)
    data, starts, ctx = _shard(rows, 0, n)
    writer.commit_shards(SHARD, [writer.sink().write_shard(0, data, seq_starts=starts, seq_context=ctx)])
    writer.abort()  # as if killed: shard 0 committed, the store not complete
    writer = ShardWriter.resume(tmp_path / "s.zarr")
    assert writer.committed == SHARD
    data, starts, ctx = _shard(rows, 1, n)
    writer.commit_shards(n, [writer.sink().write_shard(1, data, seq_starts=starts, seq_context=ctx)])
    writer.close()
    store = ActivationStore(tmp_path / "s.zarr")
    assert store.complete and store.n_sequences == -(-n // 10)
    np.testing.assert_array_equal(store.read_acts(HOOK, 0, n), rows[f"acts/{HOOK}"])
    with pytest.raises(StoreError, match="complete"):
        ShardWriter.resume(tmp_path / "s.zarr")


def test_a_sink_refuses_more_than_one_shard(tmp_path):
    writer = _create(tmp_path / "s.zarr", ShardWriter)
    writer.reserve(2 * SHARD)
    with pytest.raises(ValueError, match="do not fit in one shard"):
        writer.sink().write_shard(0, _rows(SHARD + 1))
    writer.abort()
