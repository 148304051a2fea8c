"""`osae toy` stores: the same rows and ground truth whatever the write size, sparse true codes that reproduce the
rows, readers for the old dense codes, and memory that does not grow with n * K."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from osae.store import ActivationStore, StoreWriter, hook_spec, store_fingerprint
from osae.synthetic import TOY_HOOK, ToyConfig, write_toy_store

CFG = ToyConfig(d=12, n_atoms=40, m=4, n=9000, n_eval=3000, seed=5)


def everything(path) -> dict[str, np.ndarray]:
    store = ActivationStore(path)
    out = {"acts": store.read_acts(TOY_HOOK, 0, store.n_tokens)}
    return out | {f"gt/{k}": v for k, v in store.ground_truth().items()}


def test_the_store_does_not_depend_on_the_write_size(tmp_path):
    # 1000 rows a write cuts seed blocks and zarr chunks anywhere; 50,000 takes the whole store at once.
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    write_toy_store(a, CFG, write_rows=1000)
    write_toy_store(b, CFG, write_rows=50_000)
    ra, rb = everything(a), everything(b)
    assert sorted(ra) == sorted(rb) == ["acts", "gt/code_indices", "gt/code_values", "gt/dictionary", "gt/prior"]
    for name in ra:
        assert ra[name].dtype == rb[name].dtype and (ra[name] == rb[name]).all(), name
    assert store_fingerprint(ActivationStore(a)) == store_fingerprint(ActivationStore(b))


def test_rows_do_not_depend_on_how_many_are_generated(tmp_path):
    write_toy_store(tmp_path / "long.zarr", CFG)
    write_toy_store(tmp_path / "short.zarr", ToyConfig(**{**CFG.__dict__, "n": 5000}))
    long, short = ActivationStore(tmp_path / "long.zarr"), ActivationStore(tmp_path / "short.zarr")
    assert (short.read_acts(TOY_HOOK, 0, 5000) == long.read_acts(TOY_HOOK, 0, 5000)).all()
    # The held-out rows come from their own stream: the same whatever n.
    assert (short.read_acts(TOY_HOOK, 5000, 8000) == long.read_acts(TOY_HOOK, 9000, 12000)).all()


def test_a_test_store_shares_atoms_and_training_rows_but_not_its_held_out_rows(tmp_path):
    write_toy_store(tmp_path / "val.zarr", CFG)
    write_toy_store(tmp_path / "test.zarr", ToyConfig(**{**CFG.__dict__, "held_out": "test"}))
    val, test = ActivationStore(tmp_path / "val.zarr"), ActivationStore(tmp_path / "test.zarr")
    assert (val.ground_truth()["dictionary"] == test.ground_truth()["dictionary"]).all()
    assert (val.read_acts(TOY_HOOK, 0, 9000) == test.read_acts(TOY_HOOK, 0, 9000)).all()
    held_val, held_test = val.read_acts(TOY_HOOK, 9000, 12000), test.read_acts(TOY_HOOK, 9000, 12000)
    assert not np.isclose(held_val, held_test).all(axis=1).any()  # no held-out row in common


def test_sparse_true_codes_reproduce_every_row(tmp_path):
    write_toy_store(tmp_path / "t.zarr", CFG)
    store = ActivationStore(tmp_path / "t.zarr")
    assert store.ground_truth_rows == store.n_tokens == 12000
    indices, values = store.ground_truth_codes()
    assert indices.shape == values.shape == (12000, 4)
    assert indices.dtype == np.int32 and values.dtype == np.float32
    assert (np.diff(indices, axis=1) > 0).all() and (values > 0).all()
    dictionary = store.ground_truth(["dictionary", "not-there"])
    assert list(dictionary) == ["dictionary"]
    dense = store.ground_truth_dense_codes(8000, 10_000)
    assert dense.shape == (2000, 40) and ((dense != 0).sum(axis=1) == 4).all()
    np.testing.assert_allclose(dense @ dictionary["dictionary"], store.read_acts(TOY_HOOK, 8000, 10_000), atol=1e-5)
    part = store.ground_truth_codes(11_990, 20_000)  # clipped to the stored rows
    assert (part[0] == indices[11_990:]).all() and (part[1] == values[11_990:]).all()
    assert store.meta["ground_truth"]["codes"] == "sparse"


def test_stores_with_dense_codes_read_as_sparse(tmp_path):
    # The layout before sparse codes: one (rows, K) `codes` array.
    rng = np.random.default_rng(0)
    dense = np.zeros((300, 10), np.float32)
    for row in dense:
        row[rng.choice(10, 3, replace=False)] = rng.random(3) + 0.1
    dictionary = rng.standard_normal((10, 6)).astype(np.float32)
    writer = StoreWriter.create(
        tmp_path / "old.zarr", hooks={TOY_HOOK: hook_spec(None, 6, "float32")}, has_tokens=False, chunk_rows=256
    )
    writer.write({TOY_HOOK: dense @ dictionary})
    writer.write_ground_truth({"dictionary": dictionary, "codes": dense}, {"config": {"m": 3}})
    writer.close()
    store = ActivationStore(tmp_path / "old.zarr")
    assert store.ground_truth_rows == 300
    indices, values = store.ground_truth_codes(100, 200)
    assert indices.shape == (100, 3) and (np.diff(indices, axis=1) > 0).all()
    assert (np.take_along_axis(dense[100:200], indices.astype(np.intp), axis=1) == values).all()
    assert (store.ground_truth_dense_codes(100, 200) == dense[100:200]).all()


def test_a_store_without_codes_says_so(tmp_path):
    writer = StoreWriter.create(
        tmp_path / "s.zarr", hooks={TOY_HOOK: hook_spec(None, 4, "float32")}, has_tokens=False, chunk_rows=256
    )
    writer.write({TOY_HOOK: np.zeros((10, 4), np.float32)})
    writer.close()
    store = ActivationStore(tmp_path / "s.zarr")
    assert store.ground_truth() is None and store.ground_truth_rows == 0
    with pytest.raises(Exception, match="no ground truth"):
        store.ground_truth_codes()


def test_ground_truth_rows_must_all_be_written(tmp_path):
    writer = StoreWriter.create(
        tmp_path / "s.zarr", hooks={TOY_HOOK: hook_spec(None, 4, "float32")}, has_tokens=False, chunk_rows=256
    )
    rows = writer.ground_truth_rows({"labels": ((100,), "int32")})
    rows.write({"labels": np.arange(60, dtype=np.int32)})
    with pytest.raises(Exception, match="60 of 100 rows"):
        rows.close()
    with pytest.raises(Exception, match="dtype int32"):
        rows.write({"labels": np.zeros(10, np.int64)})
    writer.abort()


PEAK_RSS = """
import json, resource, sys
from osae.synthetic import ToyConfig, write_toy_store
write_toy_store(sys.argv[1], ToyConfig(d=512, n_atoms=16384, m=32, n=120_000, n_eval=10_000))
print(json.dumps({"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_a_wide_toy_stays_in_bounded_memory(tmp_path):
    # Dense codes of these 130,000 rows alone would be 8 GiB (and their float64 Gumbel keys 16 GiB). What remains is
    # the interpreter with torch (~0.25 GiB), the writer's 234 MiB shard buffer and zarr's copies while it writes
    # a shard; none of it grows with n.
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(tmp_path / "wide.zarr")], capture_output=True, text=True, check=True
    )
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["max_rss_mib"]
    assert peak < 2048, peak
    store = ActivationStore(tmp_path / "wide.zarr")
    assert store.n_tokens == 130_000 and store.ground_truth_codes(0, 10)[0].shape == (10, 32)
