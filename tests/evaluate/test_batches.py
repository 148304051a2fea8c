import numpy as np
import pytest
import torch

from osae.evaluate.batches import checkpoint_normalizer, iter_codes, reconstruct
from osae.store import (
    ActivationStore,
    Normalizer,
    StoreWriter,
    hook_spec,
    iter_rows,
    iter_split_rows,
    load_rows,
    to_float32,
)
from osae.synthetic import ToyConfig, write_toy_store
from osae.train.architectures import build

D, K = 16, 32


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("batches") / "toy.zarr"
    write_toy_store(path, ToyConfig(d=D, n_atoms=K, m=3, n=4000, n_eval=1000))
    return ActivationStore(path)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """1500 rows in chunks of 256; chunks 1, 3 and 4 are the evaluation split (two of them adjacent)."""
    path = tmp_path_factory.mktemp("batches") / "chunked.zarr"
    w = StoreWriter.create(
        path,
        hooks={"h": hook_spec(None, 4, "float32")},
        has_tokens=False,
        chunk_rows=256,
        split={"rule": "explicit-chunks", "eval_chunks": [1, 3, 4]},
    )
    w.write({"h": np.random.default_rng(0).standard_normal((1500, 4)).astype(np.float32)})
    w.close()
    return ActivationStore(path)


@pytest.mark.parametrize("split", ["eval", "train"])
def test_batches_cover_the_split_in_order_without_crossing_a_block(chunked, split):
    blocks = [(start, to_float32(rows, chunked.dtype("h"))) for start, rows in iter_split_rows(chunked, "h", split)]
    assert len(blocks) == 3
    batches = list(iter_rows(chunked, "h", split, batch=100))
    expected = np.concatenate([rows for _, rows in blocks])
    assert np.array_equal(torch.cat([b.x for b in batches]).numpy(), expected)
    assert all(b.x.dtype == torch.float32 and 0 < len(b) <= 100 for b in batches)
    ends = {start: start + len(rows) for start, rows in blocks}
    for b in batches:
        assert b.block_start in ends and b.block_start <= b.start < b.stop <= ends[b.block_start]
        assert np.array_equal(b.x.numpy(), chunked.read_acts("h", b.start, b.stop))
    assert [b.start for b in batches if b.start == b.block_start] == [start for start, _ in blocks]


def test_max_tokens_stops_exactly(toy):
    assert sum(len(b) for b in iter_rows(toy, "toy", "eval", max_tokens=250, batch=64)) == 250
    assert len(load_rows(toy, "toy", "eval", max_tokens=250)) == 250
    assert len(load_rows(toy, "toy", "eval")) == 1000


def test_code_batches_reconstruct_in_store_units(toy):
    torch.manual_seed(0)
    sae = build("topk", d_in=D, d_sae=K, k=3).eval()
    norm = Normalizer("scalar", scale=0.6)
    seen = 0
    for b in iter_codes(sae, norm, toy, "toy", max_tokens=700, batch=256):
        torch.testing.assert_close(b.x_norm, b.x * 0.6)
        with torch.no_grad():
            code = sae.encode(b.x * 0.6)
            torch.testing.assert_close(b.recon, sae.decode(code) / 0.6)
            torch.testing.assert_close(b.prefix_recon(8), sae.decode(code, upto=8) / 0.6)
        assert b.prefix_recon(K) is b.recon and b.prefix_recon(None) is b.recon
        torch.testing.assert_close(reconstruct(sae, norm, b.x), b.recon)
        assert torch.equal(b.code.l0(), code.l0())
        seen += len(b)
    assert seen == 700


def test_an_empty_split_gives_no_rows_and_fit_refuses_it(tmp_path):
    from osae.train.fit import _init_rows

    w = StoreWriter.create(
        tmp_path / "s.zarr",
        hooks={"h": hook_spec(None, 4, "float32")},
        has_tokens=False,
        chunk_rows=64,
        split={"rule": "explicit-chunks", "eval_chunks": [0, 1]},
    )
    w.write({"h": np.ones((128, 4), np.float32)})
    w.close()
    store = ActivationStore(tmp_path / "s.zarr")
    assert load_rows(store, "h", "train").shape == (0, 4)
    assert list(iter_rows(store, "h", "train")) == []
    with pytest.raises(ValueError, match="no training rows"):
        _init_rows(store, "h", Normalizer("none"))


def test_checkpoint_normalizer_reads_the_recorded_units():
    assert checkpoint_normalizer({}).kind == "none"
    n = checkpoint_normalizer({"normalization": {"kind": "scalar", "scale": 2.5}})
    torch.testing.assert_close(n.forward(torch.ones(1, 3)), torch.full((1, 3), 2.5))
