import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from osae.errors import (
    StoreError,
    StoreFormatError,
    StoreLockedError,
    StoreMismatchError,
    UsageError,
)
from osae.store import ActivationStore, StoreWriter, hook_spec, to_float32, tools

from .helpers import HOOK, make_store, random_rows, write_sequences


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_round_trip_rows_tokens_and_sequences(tmp_path, dtype):
    data = make_store(tmp_path / "s.zarr", dtype=dtype, n_seqs=150, ctx=16, d=24)
    store = ActivationStore(tmp_path / "s.zarr")
    assert store.complete and store.n_tokens == 150 * 15 and store.n_sequences == 150
    np.testing.assert_array_equal(store.read_acts(HOOK, 0, store.n_tokens), data["acts"][HOOK])
    np.testing.assert_array_equal(store.read_rows("tokens", 0, store.n_tokens), data["tokens"])
    np.testing.assert_array_equal(store.read_rows("seq_id", 0, store.n_tokens), data["seq_id"])
    np.testing.assert_array_equal(store.read_rows("position", 0, store.n_tokens), data["position"])
    starts = store.array("sequences/row_start")[:]
    np.testing.assert_array_equal(starts, np.arange(150) * 15)
    context = store.array("sequences/context")[:]
    np.testing.assert_array_equal(context[:, 1:].reshape(-1), data["tokens"])
    # Chunk reads agree with slices, and reads stop at the committed rows.
    c = store.read_chunk(f"acts/{HOOK}", 1)
    np.testing.assert_array_equal(c, data["acts"][HOOK][256:512])
    assert len(store.read_acts(HOOK, store.n_tokens - 5, store.n_tokens + 100)) == 5


def test_bfloat16_is_stored_losslessly(tmp_path):
    import torch

    from osae.store import to_torch

    make_store(tmp_path / "b.zarr", dtype="bfloat16", n_seqs=20)
    store = ActivationStore(tmp_path / "b.zarr")
    raw = store.read_acts(HOOK, 0, 100)
    t = to_torch(raw, "bfloat16")
    assert t.dtype == torch.bfloat16
    np.testing.assert_array_equal(t.float().numpy(), to_float32(raw, "bfloat16"))


def test_running_statistics_match_the_rows(tmp_path):
    data = make_store(tmp_path / "s.zarr", dtype="float32", n_seqs=100)
    x = data["acts"][HOOK].astype(np.float64)
    st = ActivationStore(tmp_path / "s.zarr").stats(HOOK)
    assert st["count"] == len(x)
    np.testing.assert_allclose(st["mean"], x.mean(0), rtol=1e-10)
    np.testing.assert_allclose(st["var"], x.var(0), rtol=1e-8)
    assert st["mean_sq_norm"] == pytest.approx((x**2).sum(1).mean(), rel=1e-10)


def test_uncommitted_rows_are_invisible_until_their_shard_commits(tmp_path):
    rng = np.random.default_rng(0)
    w = StoreWriter.create(
        tmp_path / "s.zarr", hooks={HOOK: hook_spec(3, 8, "float32")}, has_tokens=False, chunk_rows=256
    )
    w.write({HOOK: random_rows(rng, 1000, 8, "float32")})
    reader = ActivationStore(tmp_path / "s.zarr")
    assert reader.n_tokens == 0 and not reader.complete  # one shard is 2048 rows: nothing committed yet
    w.write({HOOK: random_rows(rng, 1500, 8, "float32")})
    reader.refresh()
    assert reader.n_tokens == 2048
    w.close()
    reader.refresh()
    assert reader.n_tokens == 2500 and reader.complete


def test_fingerprint_is_content_based(tmp_path):
    make_store(tmp_path / "a.zarr", seed=1)
    make_store(tmp_path / "b.zarr", seed=1)
    make_store(tmp_path / "c.zarr", seed=2)
    fa, fb, fc = (tools.info(tmp_path / f"{n}.zarr")["fingerprint"] for n in "abc")
    assert fa == fb != fc
    report = tools.copy(tmp_path / "a.zarr", tmp_path / "z.zarr", compressor="zstd")
    assert report["ok"] and report["same_content"] and report["fingerprint"] == fa
    assert tools.info(tmp_path / "z.zarr")["compressor"] == "zstd"


def test_sequences_without_their_windows_are_refused_in_one_line(tmp_path):
    """A store that keeps token windows would fail verify with none written: the writer refuses instead."""
    w = StoreWriter.create(
        tmp_path / "a.zarr", hooks={HOOK: hook_spec(3, 8, "float16", "resid_post")}, has_tokens=True, context_size=16
    )
    with pytest.raises(UsageError, match="token window of 16 positions"):
        w.add_sequences(np.arange(10) * 15, None)
    with pytest.raises(UsageError, match=r"got shape \(10, 8\)"):
        w.add_sequences(np.arange(10) * 15, np.zeros((10, 8), np.int32))
    w.abort()


def test_verify_finds_a_corrupt_and_a_missing_chunk(tmp_path):
    make_store(tmp_path / "s.zarr", n_seqs=400, chunk_rows=256)
    assert tools.verify(tmp_path / "s.zarr")["ok"]
    shard = tmp_path / "s.zarr" / "acts" / HOOK / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[1000] ^= 0xFF  # inside the first inner chunk's data
    shard.write_bytes(bytes(raw))
    report = tools.verify(tmp_path / "s.zarr")
    assert not report["ok"]
    assert any(b["array"] == f"acts/{HOOK}" and b["chunk"] == 0 for b in report["bad_chunks"])
    # A whole missing shard reads back as fill values: the digest manifest catches it.
    (tmp_path / "s.zarr" / "tokens" / "c" / "1").unlink()
    report = tools.verify(tmp_path / "s.zarr")
    bad_tokens = {b["chunk"] for b in report["bad_chunks"] if b["array"] == "tokens"}
    assert {8, 9, 10, 11}.issubset(bad_tokens)


def test_verify_reports_non_finite_rows(tmp_path):
    rng = np.random.default_rng(0)
    w = StoreWriter.create(
        tmp_path / "s.zarr", hooks={HOOK: hook_spec(3, 8, "float16")}, has_tokens=False, chunk_rows=256
    )
    x = random_rows(rng, 600, 8, "float16")
    x[300, 2] = np.nan
    x[301, 0] = np.inf
    w.write({HOOK: x})
    w.close()
    report = tools.verify(tmp_path / "s.zarr")
    assert not report["ok"] and [b["chunk"] for b in report["bad_chunks"]] == [1]
    assert ActivationStore(tmp_path / "s.zarr").stats(HOOK)["count"] == 598


def test_append_matches_layout_and_continues(tmp_path):
    path = tmp_path / "s.zarr"
    first = make_store(path, n_seqs=50, d=16)
    with pytest.raises(StoreMismatchError, match="d_model"):
        StoreWriter.append(path, hooks={HOOK: hook_spec(3, 32, "float16")}, has_tokens=True)
    with pytest.raises(StoreMismatchError, match="dtype"):
        StoreWriter.append(path, hooks={HOOK: hook_spec(3, 16, "float32")}, has_tokens=True)
    with pytest.raises(StoreMismatchError, match="hooks"):
        StoreWriter.append(path, hooks={"other": hook_spec(3, 16, "float16")}, has_tokens=True)
    with pytest.raises(StoreError, match="complete"):
        StoreWriter.resume(path)
    w = StoreWriter.append(path, hooks={HOOK: hook_spec(3, 16, "float16")}, has_tokens=True)
    second = write_sequences(w, np.random.default_rng(5), 30, 16, 16, "float16", first_seq=50)
    w.close()
    store = ActivationStore(path)
    assert store.n_tokens == 80 * 15 and store.n_sequences == 80 and store.complete
    np.testing.assert_array_equal(
        store.read_acts(HOOK, 0, store.n_tokens), np.concatenate([first["acts"][HOOK], second["acts"][HOOK]])
    )
    assert tools.verify(path)["ok"]


def test_existing_store_is_refused_without_overwrite(tmp_path):
    make_store(tmp_path / "s.zarr", n_seqs=10)
    with pytest.raises(StoreError, match="already exists"):
        make_store(tmp_path / "s.zarr", n_seqs=10)


def test_open_errors_are_clear(tmp_path):
    with pytest.raises(StoreFormatError, match="does not exist"):
        ActivationStore(tmp_path / "nope.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreFormatError, match="not an osae store"):
        ActivationStore(tmp_path / "plain")
    make_store(tmp_path / "s.zarr", n_seqs=10)
    meta_path = tmp_path / "s.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["osae"]["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match="format version 99"):
        ActivationStore(tmp_path / "s.zarr")


def test_missing_hook_names_the_hooks(tmp_path):
    make_store(tmp_path / "s.zarr", n_seqs=10)
    with pytest.raises(StoreError, match="no hook 'nope'"):
        ActivationStore(tmp_path / "s.zarr").resolve_hook("nope")
    assert ActivationStore(tmp_path / "s.zarr").resolve_hook("3") == HOOK  # by layer number


WRITER_SCRIPT = r"""
import sys, time, numpy as np
from osae.store import StoreWriter, hook_spec
path, n_shards, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = np.random.default_rng(0)
try:
    w = StoreWriter.resume(path)
except Exception:
    w = StoreWriter.create(path, hooks={"h": hook_spec(0, 16, "float32")}, has_tokens=False, chunk_rows=256)
start = w.n_rows
for i in range(start // 512, n_shards * 4):
    rows = np.arange(i * 512, (i + 1) * 512, dtype=np.float32)[:, None] + np.zeros((1, 16), np.float32)
    w.write({"h": rows})
    print("wrote", (i + 1) * 512, flush=True)
    time.sleep(pause)
w.close()
print("done", flush=True)
"""


def _spawn_writer(tmp_path, path, n_shards, pause, kill_at=None):
    """The writer script in a subprocess; `kill_at` ("store-commit:N") makes it SIGKILL itself (osae.faults)."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "OSAE_KILL_AT"}
    if kill_at:
        env["OSAE_KILL_AT"] = kill_at
    return subprocess.Popen(
        [sys.executable, str(script), str(path), str(n_shards), str(pause)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_killed_writer_leaves_committed_rows_and_resumes_to_the_same_store(tmp_path):
    path = tmp_path / "s.zarr"
    proc = _spawn_writer(tmp_path, path, 6, 0.0, kill_at="store-commit:2")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err  # killed right after its second commit, mid-run
    assert out.splitlines()[-1] == "wrote 3584"  # the write that filled the second shard never returned
    store = ActivationStore(path)
    assert not store.complete and store.n_tokens == 2 * 2048
    x = store.read_acts("h", 0, store.n_tokens)
    np.testing.assert_array_equal(x[:, 0], np.arange(store.n_tokens, dtype=np.float32))
    # The lock died with the writer: resuming works and finishes the same store.
    proc = _spawn_writer(tmp_path, path, 6, 0.0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    store = ActivationStore(path)
    assert store.complete and store.n_tokens == 6 * 2048
    np.testing.assert_array_equal(store.read_acts("h", 0, store.n_tokens)[:, 3], np.arange(6 * 2048, dtype=np.float32))
    assert tools.verify(path)["ok"]


def test_reader_sees_only_committed_rows_while_another_process_writes(tmp_path):
    path = tmp_path / "s.zarr"
    proc = _spawn_writer(tmp_path, path, 5, 0.03)
    proc.stdout.readline()
    with pytest.raises(StoreLockedError, match="being written by pid"):
        StoreWriter.create(path, hooks={"h": hook_spec(0, 16, "float32")}, has_tokens=False, overwrite=True)
    counts = []
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        try:
            store = ActivationStore(path, quiet=True)
        except StoreError:
            continue
        n = store.n_tokens
        x = store.read_acts("h", 0, n)
        assert len(x) == n
        np.testing.assert_array_equal(x[:, 0], np.arange(n, dtype=np.float32))
        counts.append(n)
        time.sleep(0.02)
    proc.wait()
    assert counts == sorted(counts) and len(set(counts)) >= 2


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_during_append_keeps_committed_rows(small_disk):
    path = small_disk / "s.zarr"
    rng = np.random.default_rng(0)
    w = StoreWriter.create(path, hooks={HOOK: hook_spec(3, 64, "float32")}, has_tokens=False, chunk_rows=256)
    first = random_rows(rng, 2048, 64, "float32")  # one shard, 512 KiB
    w.write({HOOK: first})
    w.close()
    w = StoreWriter.append(path, hooks={HOOK: hook_spec(3, 64, "float32")}, has_tokens=False)
    written = [first]
    with pytest.raises(StoreError, match="disk full .* committed rows are intact"):
        for _ in range(10):
            written.append(random_rows(rng, 2048, 64, "float32"))
            w.write({HOOK: written[-1]})
    w.abort()
    store = ActivationStore(path)
    assert 2048 <= store.n_tokens < 2048 * len(written)
    np.testing.assert_array_equal(store.read_acts(HOOK, 0, store.n_tokens), np.concatenate(written)[: store.n_tokens])
    assert tools.verify(path)["ok"]


def test_a_corrupt_chunk_is_a_clear_read_error(tmp_path):
    from osae.store import LoaderConfig, ShuffledLoader

    make_store(tmp_path / "s.zarr", n_seqs=100, eval_fraction=0.0)
    shard = tmp_path / "s.zarr" / "acts" / HOOK / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    store = ActivationStore(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="osae store verify"):
        store.read_acts(HOOK, 0, 10)
    for direct in (True, False):  # osae's direct chunk reads and zarr's
        with pytest.raises(StoreError, match="cannot read (chunk 0|rows 0:256).*osae store verify"):
            for _ in ShuffledLoader(store, HOOK, LoaderConfig(batch_size=64, direct_reads=direct)).epoch_batches():
                pass


def test_a_read_only_location_is_refused_clearly(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount)]).returncode
    ):
        pytest.skip("needs root to mount a read-only tmpfs")
    try:
        with pytest.raises(StoreError, match="cannot write to .*Read-only file system"):
            StoreWriter.create(mount / "s.zarr", hooks={HOOK: hook_spec(3, 8, "float32")}, has_tokens=False)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
