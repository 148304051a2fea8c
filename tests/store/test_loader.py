import numpy as np
import pytest
import torch

from osae.store import (
    ActivationStore,
    LoaderConfig,
    Normalizer,
    ShuffledLoader,
    StoreWriter,
    hook_spec,
    iter_split_rows,
    split_intervals,
    to_float32,
)
from osae.store.core.split import eval_chunk_mask

from .helpers import HOOK, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader") / "s.zarr"
    # 24 rows per sequence and 256-row chunks: sequences straddle chunk boundaries.
    data = make_store(path, n_seqs=400, ctx=25, d=16, dtype="float32", chunk_rows=256, eval_fraction=0.15)
    return ActivationStore(path), data


def _epoch(store, **kw):
    cfg = LoaderConfig(**{"batch_size": 100, "buffer_bytes": 8 * 256 * 16 * 4, "drop_last": False, **kw})
    ld = ShuffledLoader(store, HOOK, cfg, with_rows=True)
    batches = [(x.clone(), r.copy()) for x, r in ld.epoch_batches()]
    return ld, batches


def test_every_training_row_exactly_once_per_epoch_with_the_right_data(store):
    s, data = store
    ld, batches = _epoch(s)
    rows = np.concatenate([r for _, r in batches])
    iv = split_intervals(s, "train")
    expected = np.concatenate([np.arange(lo, hi) for lo, hi in zip(iv.lo, iv.hi)])
    np.testing.assert_array_equal(np.sort(rows), expected)
    x = torch.cat([b for b, _ in batches]).numpy()
    np.testing.assert_array_equal(x, data["acts"][HOOK][rows])
    assert all(len(b) == 100 for b, _ in batches[:-1])


def test_stream_is_deterministic_and_differs_by_seed_and_epoch(store):
    s, _ = store
    a = np.concatenate([r for _, r in _epoch(s, seed=3)[1]])
    b = np.concatenate([r for _, r in _epoch(s, seed=3)[1]])
    c = np.concatenate([r for _, r in _epoch(s, seed=4)[1]])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    ld = ShuffledLoader(
        s, HOOK, LoaderConfig(batch_size=100, buffer_bytes=2**16, seed=3, drop_last=False), with_rows=True
    )
    it = iter(ld)
    n = ld.batches_per_epoch()
    first = np.concatenate([next(it)[1].copy() for _ in range(n)])
    second = np.concatenate([next(it)[1].copy() for _ in range(n)])
    assert ld.epoch == 1 and not np.array_equal(first, second)
    assert np.array_equal(np.sort(first), np.sort(second))


def test_batches_mix_many_sequences(store):
    s, data = store
    _, batches = _epoch(s, buffer_bytes=2**20)
    distinct = np.mean([len(np.unique(data["seq_id"][r])) for _, r in batches[:-1]])
    assert distinct > 60  # 100 rows drawn from ~330 training sequences of 24 rows


@pytest.mark.parametrize("stop_at", [0, 1, 7, 20])
def test_resume_from_state_gives_the_same_following_batches(store, stop_at):
    s, _ = store
    cfg = LoaderConfig(batch_size=64, buffer_bytes=5 * 256 * 16 * 4, seed=11)
    ref = ShuffledLoader(s, HOOK, cfg, with_rows=True)
    it = iter(ref)
    stream = [next(it)[1].copy() for _ in range(40)]
    ld = ShuffledLoader(s, HOOK, cfg, with_rows=True)
    it = iter(ld)
    for _ in range(stop_at):
        next(it)
    state = ld.state()
    resumed = ShuffledLoader(s, HOOK, cfg, with_rows=True)
    resumed.load_state(state)
    it2 = iter(resumed)
    for k in range(stop_at, 40):
        np.testing.assert_array_equal(next(it2)[1], stream[k])


def test_state_from_another_configuration_is_refused(store):
    s, _ = store
    ld = ShuffledLoader(s, HOOK, LoaderConfig(batch_size=64))
    other = ShuffledLoader(s, HOOK, LoaderConfig(batch_size=32))
    with pytest.raises(ValueError, match="batch_size"):
        other.load_state(ld.state())


def test_ranks_get_disjoint_rows_and_equal_batch_counts(store):
    s, _ = store
    cfg = LoaderConfig(batch_size=50, buffer_bytes=2**16, seed=2)
    parts = []
    for rank in range(2):
        ld = ShuffledLoader(s, HOOK, cfg, rank=rank, world_size=2, with_rows=True)
        parts.append([r.copy() for _, r in ld.epoch_batches()])
    assert len(parts[0]) == len(parts[1]) > 0
    r0, r1 = (np.concatenate(p) for p in parts)
    assert not set(r0) & set(r1)
    assert len(r0) + len(r1) > 0.8 * split_intervals(s, "train").n_rows


def test_eval_split_shares_no_sequence_with_training(store):
    s, data = store
    train, ev = split_intervals(s, "train"), split_intervals(s, "eval")
    assert ev.n_rows > 0 and train.n_rows > 0
    rows = lambda iv: np.concatenate([np.arange(lo, hi) for lo, hi in zip(iv.lo, iv.hi)])
    seq_train, seq_eval = set(data["seq_id"][rows(train)]), set(data["seq_id"][rows(ev)])
    assert not seq_train & seq_eval
    # Whole sequences only: every kept sequence keeps all of its 24 rows.
    for iv in (train, ev):
        _, counts = np.unique(data["seq_id"][rows(iv)], return_counts=True)
        assert (counts == 24).all()
    blocks = list(iter_split_rows(s, HOOK, "eval"))
    assert sum(len(b) for _, b in blocks) == ev.n_rows
    limited = list(iter_split_rows(s, HOOK, "eval", max_rows=300))
    assert sum(len(b) for _, b in limited) == min(300, ev.n_rows)


def test_hash_split_is_stable_and_near_its_fraction():
    split = {"rule": "hash-chunks", "eval_fraction": 0.1, "seed": 0}
    m = eval_chunk_mask(split, 20000)
    assert 0.09 < m.mean() < 0.11
    np.testing.assert_array_equal(eval_chunk_mask(split, 1000), m[:1000])  # growing keeps earlier choices
    assert eval_chunk_mask({"rule": "hash-chunks", "eval_fraction": 0.001, "seed": 0}, 3).sum() == 1


@pytest.mark.parametrize("kind", ["none", "scalar", "standardize"])
def test_normalization_is_invertible_and_does_what_it_says(store, kind):
    s, data = store
    norm = Normalizer.from_store(s, HOOK, kind)
    x = torch.from_numpy(data["acts"][HOOK].astype(np.float32))
    y = norm.forward(x)
    torch.testing.assert_close(norm.inverse(y), x, rtol=1e-5, atol=1e-4)
    if kind == "scalar":
        assert (y.double() ** 2).sum(1).mean().item() == pytest.approx(16, rel=1e-4)
    if kind == "standardize":
        torch.testing.assert_close(y.double().mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-4, rtol=0)
        torch.testing.assert_close(y.double().std(0), torch.ones(16, dtype=torch.float64), atol=1e-3, rtol=0)
    assert Normalizer.from_dict(norm.to_dict()).to_dict() == norm.to_dict()
    ld = ShuffledLoader(s, HOOK, LoaderConfig(batch_size=64), normalizer=norm, with_rows=True)
    xb, rows = next(iter(ld))
    torch.testing.assert_close(xb, norm.forward(torch.from_numpy(data["acts"][HOOK][rows].astype(np.float32))))


def test_bfloat16_store_feeds_float32_batches(tmp_path):
    make_store(tmp_path / "b.zarr", dtype="bfloat16", n_seqs=60, d=8)
    s = ActivationStore(tmp_path / "b.zarr")
    ld = ShuffledLoader(s, HOOK, LoaderConfig(batch_size=32), with_rows=True)
    x, rows = next(iter(ld))
    assert x.dtype == torch.float32
    raw = s.read_acts(HOOK, 0, s.n_tokens)
    np.testing.assert_array_equal(x.numpy(), to_float32(raw, "bfloat16")[rows])


def test_a_split_smaller_than_a_batch_is_a_clear_error(store):
    s, _ = store
    ld = ShuffledLoader(s, HOOK, LoaderConfig(batch_size=10**7))
    with pytest.raises(ValueError, match="fewer rows than one batch"):
        next(iter(ld))


def test_direct_chunk_reads_equal_zarr_reads(tmp_path):
    from osae.store.core.direct import DirectChunkReader, direct_layout

    data = make_store(tmp_path / "s.zarr", n_seqs=130, ctx=25, d=16, dtype="bfloat16", chunk_rows=256)
    s = ActivationStore(tmp_path / "s.zarr")
    layout = direct_layout(s, f"acts/{HOOK}")
    assert layout is not None and s.n_tokens % 256 != 0  # the last chunk is partial
    reader = DirectChunkReader(s, f"acts/{HOOK}", layout)
    out = s.empty_rows(HOOK, 256)
    for c in range(s.n_chunks):
        reader.read_chunk_into(c, out)
        lo, hi = s.chunk_bounds(c)
        np.testing.assert_array_equal(out[: hi - lo], data["acts"][HOOK][lo:hi])
    make_store(tmp_path / "z.zarr", n_seqs=20, compressor="zstd")
    assert direct_layout(ActivationStore(tmp_path / "z.zarr"), f"acts/{HOOK}") is None


@pytest.mark.parametrize("direct", [True, False])
def test_zarr_and_direct_paths_give_the_same_stream(store, direct):
    s, data = store
    ref = [r.copy() for _, r in _epoch(s, seed=5)[1]]
    cfg = LoaderConfig(
        batch_size=100,
        buffer_bytes=8 * 256 * 16 * 4,
        drop_last=False,
        seed=5,
        direct_reads=direct,
        verify_checksums=False,
    )
    got = [(x.clone(), r.copy()) for x, r in ShuffledLoader(s, HOOK, cfg, with_rows=True).epoch_batches()]
    for (x, r), r0 in zip(got, ref):
        np.testing.assert_array_equal(r, r0)
        np.testing.assert_array_equal(x.numpy(), data["acts"][HOOK][r])


def test_a_compressed_store_streams_through_zarr(tmp_path):
    data = make_store(tmp_path / "z.zarr", n_seqs=80, compressor="zstd", dtype="float32", eval_fraction=0.0)
    s = ActivationStore(tmp_path / "z.zarr")
    ld = ShuffledLoader(s, HOOK, LoaderConfig(batch_size=64, drop_last=False), with_rows=True)
    rows = []
    for x, r in ld.epoch_batches():
        np.testing.assert_array_equal(x.numpy(), data["acts"][HOOK][r])
        rows.append(r.copy())
    assert np.array_equal(np.sort(np.concatenate(rows)), np.arange(s.n_tokens))


def test_abandoning_an_epoch_midway_and_starting_again_is_safe(store):
    s, data = store
    ld = ShuffledLoader(s, HOOK, LoaderConfig(batch_size=64, drop_last=False), with_rows=True)
    it = ld.epoch_batches()
    next(it), next(it)
    ld.epoch, ld.batch = 0, 0  # a caller rewinding by hand while the first run is still open
    for x, r in ld.epoch_batches():
        np.testing.assert_array_equal(x.numpy(), data["acts"][HOOK][r])


def test_slice_mode_ranks_split_exactly_the_one_process_batches(store):
    s, _ = store
    single = ShuffledLoader(s, HOOK, LoaderConfig(batch_size=100, buffer_bytes=2**16, seed=4), with_rows=True)
    ref = [r.copy() for _, r in single.epoch_batches()]
    parts = []
    for rank in range(2):
        ld = ShuffledLoader(
            s,
            HOOK,
            LoaderConfig(batch_size=50, buffer_bytes=2**16, seed=4, rank_mode="slice"),
            rank=rank,
            world_size=2,
            with_rows=True,
        )
        parts.append([r.copy() for _, r in ld.epoch_batches()])
    assert len(parts[0]) == len(parts[1]) == len(ref)
    for b, r in enumerate(ref):
        np.testing.assert_array_equal(np.concatenate([parts[0][b], parts[1][b]]), r)


def test_small_stores_hold_out_at_least_min_eval_rows_and_large_ones_their_fraction():
    split = {"rule": "hash-chunks", "eval_fraction": 0.02, "seed": 0, "min_eval_rows": 100_000}
    small = eval_chunk_mask(split, 40, chunk_rows=8192)  # 328k rows: 2% would be ~1 chunk
    assert small.sum() == 13 and small.sum() * 8192 >= 100_000
    assert (small | eval_chunk_mask({**split, "min_eval_rows": 0}, 40)).sum() == small.sum()  # a superset
    assert eval_chunk_mask(split, 10, chunk_rows=8192).sum() == 5  # never more than half the chunks
    large = eval_chunk_mask(split, 20000, chunk_rows=8192)
    np.testing.assert_array_equal(large, eval_chunk_mask({**split, "min_eval_rows": 0}, 20000))


def test_a_new_store_records_the_minimum_and_its_eval_split_reaches_it(tmp_path):
    w = StoreWriter.create(
        tmp_path / "s.zarr", hooks={HOOK: hook_spec(0, 4, "float16")}, has_tokens=False, chunk_rows=4096
    )
    w.write({HOOK: np.zeros((4096 * 60, 4), np.float16)})
    w.close()
    s = ActivationStore(tmp_path / "s.zarr")
    assert s.meta["split"]["min_eval_rows"] == 100_000
    assert split_intervals(s, "eval").n_rows >= 100_000 and split_intervals(s, "train").n_rows >= 4096 * 30


def test_normalizing_float16_rows_computes_in_the_output_dtype():
    """Scaling float16 rows into float32 must not round the product to float16 first."""
    x = torch.tensor([[1.0009765625, 3.0, -7.0]], dtype=torch.float16)  # exact in float16
    scale = 1.2345678
    out = torch.empty(1, 3)
    Normalizer("scalar", scale=scale).into(x, out)
    torch.testing.assert_close(out, x.double().mul(scale).float(), rtol=1e-7, atol=0)
    shifted = Normalizer("standardize", scale=[scale] * 3, shift=[0.5, 0.25, -1.0])
    shifted.into(x, out)
    torch.testing.assert_close(out, ((x.double() - torch.tensor([0.5, 0.25, -1.0])) * scale).float(), rtol=1e-7, atol=0)
