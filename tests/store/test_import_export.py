"""`osae store import` / `export`: bit-exact round trips, SAELens caches written with `datasets`, resume
after a kill, and one-line refusals of bad input."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from osae.store import ActivationStore, import_activations


def _osae(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "osae", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def _kill_after_first_commit(src, out):
    """Run an import that SIGKILLs itself right after its first commit (OSAE_KILL_AT, osae.faults)."""
    proc = subprocess.run(
        [sys.executable, "-m", "osae", "store", "import", str(src), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OSAE_KILL_AT": "store-commit:1"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = ActivationStore(out)
    assert store.n_tokens == store.shard_rows and not store.complete  # exactly the first shard is committed


def _all_rows(store_path, hook):
    s = ActivationStore(store_path)
    return s.read_rows(f"acts/{hook}", 0, s.n_tokens)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_npy_round_trip_is_bit_exact(tmp_path, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((70_001, 48)).astype(dtype)  # not a multiple of any chunk size
    np.save(tmp_path / "a.npy", x)
    proc = _osae(
        "store", "import", tmp_path / "a.npy", "--out", tmp_path / "s.zarr", "--hook", "blocks.2.hook_resid_post"
    )
    assert proc.returncode == 0, proc.stderr
    store = ActivationStore(tmp_path / "s.zarr")
    assert store.hooks["blocks.2.hook_resid_post"] == {"layer": 2, "hook": "resid_post", "d_model": 48, "dtype": dtype}
    assert not store.has_tokens and store.complete and store.n_tokens == len(x)
    imp = store.meta["provenance"]["imports"][0]
    assert imp["sources"][0]["sha256"] and imp["rows"] == len(x)
    assert _osae("store", "verify", tmp_path / "s.zarr").returncode == 0
    proc = _osae("store", "export", tmp_path / "s.zarr", "--out", tmp_path / "back.npy")
    assert proc.returncode == 0, proc.stderr
    back = np.load(tmp_path / "back.npy")
    assert back.dtype == x.dtype and np.array_equal(back.view(np.uint8), x.view(np.uint8))
    part = _osae("store", "export", tmp_path / "s.zarr", "--out", tmp_path / "part.npy", "--rows", "100:-1")
    assert part.returncode == 0 and np.array_equal(np.load(tmp_path / "part.npy"), x[100:-1])


def test_bfloat16_round_trip_through_safetensors(tmp_path):
    x = torch.randn(20_000, 32).to(torch.bfloat16)
    save_file({"blocks.5.hook_mlp_out": x}, tmp_path / "a.safetensors")
    assert _osae("store", "import", tmp_path / "a.safetensors", "--out", tmp_path / "s.zarr").returncode == 0
    store = ActivationStore(tmp_path / "s.zarr")
    assert store.hooks["blocks.5.hook_mlp_out"]["dtype"] == "bfloat16"
    proc = _osae("store", "export", tmp_path / "s.zarr", "--out", tmp_path / "b.safetensors")
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file as load_torch

    back = load_torch(tmp_path / "b.safetensors")["blocks.5.hook_mlp_out"]
    assert back.dtype == torch.bfloat16 and torch.equal(back.view(torch.int16), x.view(torch.int16))
    npy = _osae("store", "export", tmp_path / "s.zarr", "--out", tmp_path / "b.npy")
    assert npy.returncode == 1 and "bfloat16" in npy.stderr and "Traceback" not in npy.stderr


def test_a_directory_imports_in_natural_order_and_safetensors_carry_several_hooks(tmp_path):
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((n, 8)).astype(np.float32) for n in (300, 500, 200)]
    src = tmp_path / "parts"
    src.mkdir()
    for i, p in zip((2, 10, 1), parts):  # natural order: 1, 2, 10
        np.save(src / f"acts-{i}.npy", p)
    assert _osae("store", "import", src, "--out", tmp_path / "s.zarr").returncode == 0
    assert np.array_equal(_all_rows(tmp_path / "s.zarr", "imported"), np.concatenate([parts[2], parts[0], parts[1]]))
    a, b = rng.standard_normal((2, 400, 16)).astype(np.float32)
    save_file(
        {"blocks.1.hook_resid_post": torch.from_numpy(a), "blocks.2.hook_resid_post": torch.from_numpy(b)},
        tmp_path / "two.safetensors",
    )
    assert _osae("store", "import", tmp_path / "two.safetensors", "--out", tmp_path / "t.zarr").returncode == 0
    assert np.array_equal(_all_rows(tmp_path / "t.zarr", "blocks.2.hook_resid_post"), b)
    assert np.array_equal(_all_rows(tmp_path / "t.zarr", "blocks.1.hook_resid_post"), a)


def test_a_saelens_cache_written_with_datasets_imports_with_its_tokens(tmp_path):
    from datasets import Array2D, Dataset, Features, Sequence, Value

    ctx, d, n_seq = 16, 24, 90
    rng = np.random.default_rng(2)
    acts = rng.standard_normal((n_seq, ctx, d)).astype(np.float32)
    toks = rng.integers(0, 5000, (n_seq, ctx)).astype(np.int32)
    hook = "blocks.3.hook_resid_post"
    # The layout SAELens' CacheActivationsRunner writes: one Array2D column per hook plus token_ids.
    features = Features(
        {hook: Array2D(shape=(ctx, d), dtype="float32"), "token_ids": Sequence(Value("int32"), length=ctx)}
    )
    Dataset.from_dict({hook: acts, "token_ids": toks}, features=features).save_to_disk(
        str(tmp_path / "cache"), num_shards=3
    )
    proc = _osae("store", "import", tmp_path / "cache", "--out", tmp_path / "s.zarr", "--model", "pythia-70m")
    assert proc.returncode == 0, proc.stderr
    store = ActivationStore(tmp_path / "s.zarr")
    assert store.has_tokens and store.context_size == ctx and store.hooks[hook]["layer"] == 3
    assert np.array_equal(store.read_rows(f"acts/{hook}", 0, store.n_tokens), acts.reshape(-1, d))
    assert np.array_equal(store.read_rows("tokens", 0, store.n_tokens), toks.reshape(-1))
    assert np.array_equal(store.read_rows("position", 0, store.n_tokens), np.tile(np.arange(ctx), n_seq))
    assert np.array_equal(store.read_rows("seq_id", 0, store.n_tokens), np.repeat(np.arange(n_seq), ctx))
    assert store.n_sequences == n_seq
    assert np.array_equal(store.array("sequences/context")[:], toks)
    assert store.meta["provenance"]["model"]["name"] == "pythia-70m"
    # The held-out split drops no sequence in the middle: every eval interval holds whole sequences.
    from osae.store import split_intervals

    iv = split_intervals(store, "eval")
    assert all(lo % ctx == 0 and hi % ctx == 0 for lo, hi in zip(iv.lo, iv.hi))


def test_nonfinite_rows_are_refused_or_dropped_and_counted(tmp_path):
    x = np.random.default_rng(3).standard_normal((1000, 8)).astype(np.float32)
    x[[5, 500, 501]] = np.nan
    x[700, 2] = np.inf
    np.save(tmp_path / "bad.npy", x)
    proc = _osae("store", "import", tmp_path / "bad.npy", "--out", tmp_path / "s.zarr")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "NaN/Inf" in proc.stderr and "first: source row 5" in proc.stderr and "--drop-nonfinite" in proc.stderr
    proc = _osae("store", "import", tmp_path / "bad.npy", "--out", tmp_path / "s.zarr", "--drop-nonfinite")
    assert proc.returncode == 0, proc.stderr
    assert "4 non-finite rows dropped" in proc.stdout
    keep = np.isfinite(x).all(1)
    assert np.array_equal(_all_rows(tmp_path / "s.zarr", "imported"), x[keep])
    assert ActivationStore(tmp_path / "s.zarr").meta["provenance"]["imports"][0]["nonfinite_dropped"] == 4


def test_bad_input_gets_one_line(tmp_path):
    np.save(tmp_path / "r1.npy", np.zeros(10, np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((10, 4), np.int64))
    d = tmp_path / "mixed"
    d.mkdir()
    np.save(d / "a.npy", np.zeros((10, 4), np.float32))
    np.save(d / "b.npy", np.zeros((10, 5), np.float32))
    np.save(tmp_path / "ok.npy", np.ones((10, 4), np.float32))
    np.save(tmp_path / "wide.npy", np.ones((10, 6), np.float32))
    assert _osae("store", "import", tmp_path / "ok.npy", "--out", tmp_path / "s.zarr").returncode == 0
    cases = {
        (tmp_path / "r1.npy", tmp_path / "x.zarr"): "has shape (10,)",
        (tmp_path / "ints.npy", tmp_path / "x.zarr"): "int64",
        (d, tmp_path / "x.zarr"): "mismatched widths",
        (tmp_path / "ok.npy", tmp_path / "s.zarr"): "already exists; pass --append",
        (tmp_path / "nothing.npy", tmp_path / "x.zarr"): "no such file",
    }
    for (src, out), expected in cases.items():
        proc = _osae("store", "import", src, "--out", out)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    wide = _osae("store", "import", tmp_path / "wide.npy", "--out", tmp_path / "s.zarr", "--append")
    assert wide.returncode == 1 and "Traceback" not in wide.stderr and "d_model" in wide.stderr
    ok = _osae("store", "import", tmp_path / "ok.npy", "--out", tmp_path / "s.zarr", "--append")
    assert ok.returncode == 0, ok.stderr
    assert ActivationStore(tmp_path / "s.zarr").n_tokens == 20
    assert len(ActivationStore(tmp_path / "s.zarr").meta["provenance"]["imports"]) == 2


def test_a_killed_import_resumes_to_the_same_store(tmp_path):
    x = np.random.default_rng(4).standard_normal((400_000, 64)).astype(np.float32)  # ~100 MiB, several shards
    np.save(tmp_path / "big.npy", x)
    out = tmp_path / "s.zarr"
    _kill_after_first_commit(tmp_path / "big.npy", out)
    partial = ActivationStore(out)
    assert 0 < partial.n_tokens < len(x) and not partial.complete
    resumed = _osae("store", "import", tmp_path / "big.npy", "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after" in resumed.stdout
    assert np.array_equal(_all_rows(out, "imported"), x)
    import_activations(tmp_path / "big.npy", tmp_path / "fresh.zarr", progress=False)
    assert (
        ActivationStore(out).meta["commit"]["stats"] == ActivationStore(tmp_path / "fresh.zarr").meta["commit"]["stats"]
    )
    assert (
        json.loads(_osae("store", "info", out, "--json").stdout)["fingerprint"]
        == json.loads(_osae("store", "info", tmp_path / "fresh.zarr", "--json").stdout)["fingerprint"]
    )


def test_a_harvested_store_exported_with_tokens_imports_back_with_the_same_tokens(tmp_path):
    from osae.harvest import HarvestConfig, harvest
    from osae.harvest.models import EMBEDDED_DIR

    if not (EMBEDDED_DIR / "config.json").exists():
        pytest.skip("the embedded model is not built")
    harvest(
        HarvestConfig(out=str(tmp_path / "h.zarr"), layers=[1], tokens=3000, context_size=32, store_dtype="float16"),
        progress=False,
    )
    src = ActivationStore(tmp_path / "h.zarr")
    hook = src.resolve_hook(None)
    assert _osae("store", "export", tmp_path / "h.zarr", "--out", tmp_path / "h.safetensors").returncode == 0
    proc = _osae("store", "import", tmp_path / "h.safetensors", "--out", tmp_path / "back.zarr", "--tensor", hook)
    assert proc.returncode == 0, proc.stderr
    back = ActivationStore(tmp_path / "back.zarr")
    assert back.has_tokens and back.n_tokens == src.n_tokens
    for path in (f"acts/{hook}", "tokens", "position", "seq_id"):
        assert np.array_equal(back.read_rows(path, 0, back.n_tokens), src.read_rows(path, 0, src.n_tokens)), path
    assert back.n_sequences == src.n_sequences


def _sequences_file(path, n_seq, ctx, d, seed=5):
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((n_seq, ctx, d)).astype(np.float32)
    toks = rng.integers(0, 50_000, (n_seq, ctx)).astype(np.int32)
    return acts, toks


def _windows_agree_with_rows(store):
    """Every stored row's token sits at its position in its sequence's window (found through row_start)."""
    tokens = store.read_rows("tokens", 0, store.n_tokens)
    pos = store.read_rows("position", 0, store.n_tokens)
    seq = store.sequence_of_rows(np.arange(store.n_tokens))
    ctx = store.array("sequences/context")[: store.n_sequences]
    return bool((ctx[seq, pos] == tokens).all()) and not (ctx < 0).any()


def test_dropped_sequences_keep_windows_and_rows_in_step(tmp_path):
    acts, toks = _sequences_file(tmp_path, 40, 16, 8)
    acts[3] = np.nan  # a whole sequence goes
    acts[7, 5, 0] = np.inf  # one row of another
    save_file(
        {"blocks.0.hook_resid_post": torch.from_numpy(acts), "tokens": torch.from_numpy(toks)},
        tmp_path / "s.safetensors",
    )
    proc = _osae("store", "import", tmp_path / "s.safetensors", "--out", tmp_path / "s.zarr", "--drop-nonfinite")
    assert proc.returncode == 0, proc.stderr
    store = ActivationStore(tmp_path / "s.zarr")
    assert store.n_tokens == 40 * 16 - 17 and store.n_sequences == 39
    assert _windows_agree_with_rows(store)


def test_a_killed_sequence_import_resumes_with_whole_windows(tmp_path):
    acts, toks = _sequences_file(tmp_path, 3000, 100, 64)  # ~73 MiB, sequences not aligned to chunks
    src = tmp_path / "seqs.safetensors"
    save_file({"blocks.0.hook_resid_post": torch.from_numpy(acts), "tokens": torch.from_numpy(toks)}, src)
    out = tmp_path / "s.zarr"
    _kill_after_first_commit(src, out)
    assert 0 < ActivationStore(out).n_tokens < 300_000
    assert _osae("store", "import", src, "--out", out).returncode == 0
    store = ActivationStore(out)
    assert store.n_tokens == 300_000 and store.n_sequences == 3000
    assert np.array_equal(store.read_rows("tokens", 0, store.n_tokens), toks.reshape(-1))
    assert _windows_agree_with_rows(store)


def test_append_refuses_longer_sequences_than_the_store_windows(tmp_path):
    for name, ctx in (("short", 8), ("long", 12)):
        acts, toks = _sequences_file(tmp_path, 10, ctx, 4)
        save_file(
            {"blocks.0.hook_resid_post": torch.from_numpy(acts), "tokens": torch.from_numpy(toks)},
            tmp_path / f"{name}.safetensors",
        )
    assert _osae("store", "import", tmp_path / "short.safetensors", "--out", tmp_path / "s.zarr").returncode == 0
    proc = _osae("store", "import", tmp_path / "long.safetensors", "--out", tmp_path / "s.zarr", "--append")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "windows of 8 positions" in proc.stderr
    assert ActivationStore(tmp_path / "s.zarr").complete  # refused before touching the store
