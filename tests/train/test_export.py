import json

import pytest
import torch
from safetensors.torch import load_file

from osae.store import ActivationStore
from osae.synthetic import ToyConfig, write_toy_store
from osae.train.checkpoint import load_frozen
from osae.train.config import SAESpec, TrainConfig
from osae.train.export import export_saelens
from osae.train.fit import fit


def _saelens_forward(cfg: dict, w: dict, x: torch.Tensor) -> torch.Tensor:
    """What SAELens computes for these architectures (written from their definitions, not their code)."""
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "topk":
        vals, idx = torch.topk(pre, cfg["k"], dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    elif cfg["architecture"] == "jumprelu":
        z = pre * (pre > w["threshold"])
    else:
        z = pre.relu()
    return z @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize("arch,extra", [("osae", {}), ("batchtopk", {"threshold_start": 2}), ("relu", {})])
def test_exported_weights_reproduce_the_reconstruction_on_raw_activations(arch, extra, tmp_path):
    store = tmp_path / "toy.zarr"
    write_toy_store(store, ToyConfig(d=16, n_atoms=32, m=3, n=8000, n_eval=1000))
    fit(
        TrainConfig(
            store=str(store),
            out=str(tmp_path / "run"),
            saes=[SAESpec(arch, 0, {"d_sae": 32, "k": 3, **extra})],
            tokens=256 * 12,
            batch_size=256,
            buffer_bytes=2**20,
            lr_warmup_steps=2,
        ),
        progress=False,
    )
    ckpt = next(p for p in (tmp_path / "run").iterdir() if p.is_dir())
    export_saelens(ckpt, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    w = load_file(str(tmp_path / "out" / "sae_weights.safetensors"))
    assert w["W_enc"].shape == (16, 32) and w["W_dec"].shape == (32, 16) and cfg["normalize_activations"] == "none"
    x = torch.from_numpy(ActivationStore(store).read_acts("toy", 0, 500))
    sae, config = load_frozen(ckpt)
    s = config["normalization"]["scale"]
    ours = sae.decode(sae.encode(x * s)) / s  # trained in normalized units
    torch.testing.assert_close(_saelens_forward(cfg, w, x), ours, rtol=1e-4, atol=1e-5)
