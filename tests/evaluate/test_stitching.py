import numpy as np
import pytest
import torch

from osae.evaluate.stitching import stitching
from osae.store import ActivationStore, StoreWriter, hook_spec
from osae.train.architectures import build


def _projector(atoms: torch.Tensor):
    """A ReLU SAE whose code is the projection on orthonormal atoms: z_i = relu(<x, a_i>)."""
    sae = build("relu", d_in=atoms.shape[1], d_sae=atoms.shape[0], k=1).eval()
    with torch.no_grad():
        sae.W_enc.copy_(atoms)
        sae.W_dec.copy_(atoms)
        sae.b_enc.fill_(-1e-4)  # float noise along unused atoms must not count as firing
    return sae


def test_stitching_finds_exactly_the_atoms_the_small_sae_lacks(tmp_path):
    d = 16
    basis = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))[0].T  # orthonormal rows
    rng = np.random.default_rng(0)
    y = np.abs(rng.standard_normal((3000, 12))) * (rng.random((3000, 12)) < 0.3)  # atoms 12..15 never used
    x = (y @ basis[:12].numpy()).astype(np.float32)
    w = StoreWriter.create(
        tmp_path / "s.zarr",
        hooks={"h": hook_spec(None, d, "float32")},
        has_tokens=False,
        chunk_rows=256,
        split={"rule": "explicit-chunks", "eval_chunks": list(range(12))},
    )
    w.write({"h": x})
    w.close()
    small = (_projector(basis[:6]), {"normalization": {"kind": "none"}})
    large = (_projector(basis), {"normalization": {"kind": "none"}})
    r = stitching(small, large, ActivationStore(tmp_path / "s.zarr"), "h")
    # atoms 0-5 are already in the small SAE (adding them double-counts), 6-11 are new, 12-15 never fire
    assert r["reconstruction_fraction"] == pytest.approx(6 / 16)
    assert r["novel_fraction"] == pytest.approx(6 / 16)
    assert r["no_change_fraction"] == pytest.approx(4 / 16) and r["never_fired_fraction"] == pytest.approx(4 / 16)
    # the large SAE's first 6 latents are the small one's; its new ones all sit above index 6
    assert r["novel_fraction_below_small"] == 0 and r["novel_fraction_above_small"] == pytest.approx(6 / 10)
    # dMSE_j is exactly -E_j (new) or +E_j (repeated): the split holds at any margin below 1
    for margin in r["margins"].values():
        assert margin == {"novel": pytest.approx(6 / 16), "reconstruction": pytest.approx(6 / 16)}


def _standardized(atoms: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor):
    """`_projector(atoms)` rewritten to read standardized rows y = (x - mean) * inv_std: the same code
    z_i = relu(<x, a_i>) and the same reconstruction in store units, with non-unit atoms a_i * inv_std."""
    sae = build("relu", d_in=atoms.shape[1], d_sae=atoms.shape[0], k=1).eval()
    with torch.no_grad():
        sae.W_enc.copy_(atoms / inv_std)
        sae.W_dec.copy_(atoms * inv_std)
        sae.b_dec.copy_(-mean * inv_std)  # pre = <y - b_dec, a / inv_std> = <x, a>
        sae.b_enc.fill_(-1e-4)
    cfg = {"normalization": {"kind": "standardize", "scale": inv_std.tolist(), "shift": mean.tolist()}}
    return sae, cfg


def test_stitching_is_the_same_in_any_units(tmp_path):
    d = 16
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0].T
    rng = np.random.default_rng(1)
    y = np.abs(rng.standard_normal((3000, 12))) * (rng.random((3000, 12)) < 0.3)
    x = (y @ basis[:12].numpy()).astype(np.float32)
    w = StoreWriter.create(
        tmp_path / "s.zarr",
        hooks={"h": hook_spec(None, d, "float32")},
        has_tokens=False,
        chunk_rows=256,
        split={"rule": "explicit-chunks", "eval_chunks": list(range(12))},
    )
    w.write({"h": x})
    w.close()
    store = ActivationStore(tmp_path / "s.zarr")
    mean, inv_std = torch.from_numpy(x.mean(0)).double(), torch.rand(d, generator=g, dtype=torch.float64) + 0.5
    raw = stitching(
        (_projector(basis[:6].float()), {"normalization": {"kind": "none"}}),
        (_projector(basis.float()), {"normalization": {"kind": "none"}}),
        store,
        "h",
    )
    small = _standardized(basis[:6], mean, inv_std)
    large = _standardized(basis, mean, inv_std)
    std = stitching((small[0].double(), small[1]), (large[0].double(), large[1]), store, "h")
    for key in ("novel_fraction", "reconstruction_fraction", "no_change_fraction", "never_fired_fraction"):
        assert std[key] == pytest.approx(raw[key]), key
    assert raw["novel_fraction"] == pytest.approx(6 / 16) and raw["reconstruction_fraction"] == pytest.approx(6 / 16)
