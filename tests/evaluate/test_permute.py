import numpy as np
import torch

from osae.evaluate.permute import permute_checkpoint
from osae.store import ActivationStore
from osae.synthetic import ToyConfig, write_toy_store
from osae.train.checkpoint import load_frozen
from osae.train.config import SAESpec, TrainConfig
from osae.train.fit import fit


def test_permuted_checkpoint_keeps_reconstructions_and_sorts_importance(tmp_path):
    write_toy_store(tmp_path / "toy.zarr", ToyConfig(d=16, n_atoms=32, m=3, n=8000, n_eval=1000))
    fit(
        TrainConfig(
            store=str(tmp_path / "toy.zarr"),
            out=str(tmp_path / "run"),
            saes=[SAESpec("topk", 0, {"d_sae": 32, "k": 3})],
            tokens=256 * 20,
            batch_size=256,
            buffer_bytes=2**20,
            lr_warmup_steps=2,
        ),
        progress=False,
    )
    ckpt = tmp_path / "run" / "topk-K32-k3-s0"
    result = permute_checkpoint(ckpt, str(tmp_path / "toy.zarr"), tmp_path / "perm", by="ea2")
    assert result["moved"] > 0
    a, cfg = load_frozen(ckpt)
    b, cfg_b = load_frozen(tmp_path / "perm")
    s = cfg["normalization"]["scale"]
    x = torch.from_numpy(ActivationStore(tmp_path / "toy.zarr").read_acts("toy", 8000, 9000)) * s
    with torch.no_grad():
        torch.testing.assert_close(b.decode(b.encode(x)), a.decode(a.encode(x)), rtol=1e-5, atol=1e-5)
        z = b.encode(x).dense(32)
    ea2 = (z**2).mean(0).numpy()
    # importance was calibrated on training rows; on held-out rows it is close to sorted
    assert np.corrcoef(np.arange(32), ea2)[0, 1] < -0.5
    assert cfg_b["permuted"]["by"] == "ea2" and len(cfg_b["permuted"]["permutation"]) == 32
