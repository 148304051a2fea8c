"""SAEs with known answers for the metric tests."""

import torch

from osae.train.architectures import build


def identity_sae(d: int):
    """A ReLU SAE that reconstructs exactly: relu(x) - relu(-x) = x, latents i and d + i carrying the
    positive and negative part of coordinate i."""
    sae = build("relu", d_in=d, d_sae=2 * d, k=1).eval()
    pm = torch.cat([torch.eye(d), -torch.eye(d)])
    with torch.no_grad():
        sae.W_enc.copy_(pm)
        sae.W_dec.copy_(pm)
    return sae


def fitted_toy_run(root, specs, *, n: int, tokens: int, normalization: str):
    """A toy store (d=16, 32 atoms, m=3, n rows, 1000 held out) at root/toy.zarr and the run `specs` trained
    on it at root/run (batches of 256, a 2-step warm-up); returns root."""
    from osae.synthetic import ToyConfig, write_toy_store
    from osae.train.config import TrainConfig
    from osae.train.fit import fit

    write_toy_store(root / "toy.zarr", ToyConfig(d=16, n_atoms=32, m=3, n=n, n_eval=1000))
    cfg = TrainConfig(
        store=str(root / "toy.zarr"),
        out=str(root / "run"),
        saes=specs,
        tokens=tokens,
        batch_size=256,
        buffer_bytes=2**20,
        lr_warmup_steps=2,
        normalization=normalization,
    )
    fit(cfg, progress=False)
    return root
