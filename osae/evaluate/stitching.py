"""SAE stitching: which latents of a larger SAE are new to a smaller one (methods.md 4.6; Leask et al.).

For every latent j of the large SAE L, add its contribution z^L_j(x) d^L_j (L's own inference code) to the
small SAE S's reconstruction and measure the change of the squared error over the evaluation tokens:
    dMSE_j = mean_x [ (z^L_j)^2 ||d^L_j||^2 - 2 z^L_j <e_S, d^L_j> ],   e_S = x - x_hat_S   (store units)
novel if dMSE_j < -tol (S lacked it), reconstruction if dMSE_j > tol (it overlaps S), no change otherwise
(in practice: never fired). tol = 1e-9 * MSE_S. Also reported: the share of large latents whose best cosine
with any small atom is below 0.7 (a heuristic of the stitching write-up), and how often the two agree.
"""

from __future__ import annotations

import torch

from osae.store.loader import iter_split_rows
from osae.store.reader import ActivationStore, to_float32
from osae.train.architectures.base import SparseCode


def _scale(cfg: dict) -> float:
    norm = cfg.get("normalization", {"kind": "none"})
    if norm.get("kind") == "standardize":
        raise ValueError("stitching needs SAEs trained with normalization none or scalar")
    return float(norm.get("scale", 1.0)) if norm.get("kind") == "scalar" else 1.0


@torch.no_grad()
def stitching(small, large, store: ActivationStore, hook: str, *, max_tokens: int = 1_000_000, batch: int = 4096) -> dict:
    (sae_s, cfg_s), (sae_l, cfg_l) = small, large
    s_s, s_l = _scale(cfg_s), _scale(cfg_l)
    K = sae_l.cfg.d_sae
    sq = torch.zeros(K, dtype=torch.float64)
    cross = torch.zeros(K, dtype=torch.float64)
    norms2 = (sae_l.W_dec.double() ** 2).sum(1)
    sse_s, n = 0.0, 0
    for _, rows in iter_split_rows(store, hook, "eval", max_rows=max_tokens):
        x_all = torch.from_numpy(to_float32(rows, store.dtype(hook)))
        for b in range(0, len(x_all), batch):
            x = x_all[b : b + batch]
            e_s = (x - sae_s.decode(sae_s.encode(x * s_s)) / s_s).double()
            code = sae_l.encode(x * s_l)
            z = (code.dense(K) if isinstance(code, SparseCode) else code).double() / s_l  # store units
            sq += (z ** 2).sum(0) * norms2
            cross += (z * (e_s @ sae_l.W_dec.double().T)).sum(0)
            sse_s += float((e_s ** 2).sum())
            n += len(x)
    if n == 0:
        raise ValueError(f"{store.loc.display} has an empty evaluation split")
    d_mse = (sq - 2 * cross).numpy() / n
    tol = 1e-9 * sse_s / n
    novel, recon = d_mse < -tol, d_mse > tol
    cos = (torch.nn.functional.normalize(sae_l.W_dec.double(), dim=1)
           @ torch.nn.functional.normalize(sae_s.W_dec.double(), dim=1).T).max(1).values.numpy()
    heuristic = cos < 0.7
    return {"novel_fraction": float(novel.mean()), "reconstruction_fraction": float(recon.mean()),
            "no_change_fraction": float((~novel & ~recon).mean()), "never_fired_fraction": float((sq.numpy() == 0).mean()),
            "cosine_heuristic_novel_fraction": float(heuristic.mean()),
            "heuristic_agreement": float((heuristic == novel).mean()), "tokens": n, "d_sae_small": sae_s.cfg.d_sae,
            "d_sae_large": K}
