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
