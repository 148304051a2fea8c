"""SAE stitching: which latents of a larger SAE are new to a smaller one (methods.md 4.6; Leask et al.).

For every latent j of the large SAE L, add its contribution z^L_j(x) d^L_j (L's own inference code) to the
small SAE S's reconstruction and measure the change of the squared error over the evaluation tokens:
    dMSE_j = mean_x [ (z^L_j)^2 ||d^L_j||^2 - 2 z^L_j <e_S, d^L_j> ],   e_S = x - x_hat_S   (store units)
novel if dMSE_j < -tol (S lacked it), reconstruction if dMSE_j > tol (it overlaps S), no change otherwise
(in practice: never fired). tol = 1e-9 * MSE_S. Also reported: the share of large latents whose best cosine
with any small atom is below 0.7 (a heuristic of the stitching write-up), and how often the two agree.
Two checks of how firm the split is: the novel share among large latents below and above index K_small (an
ordered large SAE should repeat the small one in its first K_small latents), and the split when |dMSE_j| must
exceed a margin times the latent's own contribution E[(z^L_j)^2 ||d^L_j||^2] (MARGINS), the rest counting as
no change.
Each SAE reads the rows in its own training units; d^L_j is L's atom taken to store units, so any
normalisation (none, scalar, standardize) works.
"""

from __future__ import annotations

import torch

from osae.errors import UsageError
from osae.evaluate.batches import checkpoint_normalizer, encode_rows, reconstruct
from osae.store import ActivationStore, Normalizer, iter_rows

MARGINS = (0.1, 0.2, 0.5)


def atoms_in_store_units(sae, normalizer: Normalizer) -> torch.Tensor:
    """(F, D) float64: what one unit of each latent adds to the reconstruction in store units. Normalizing
    is affine (y = (x - shift) * scale), so an atom d_j maps to d_j / scale; the shift only moves the bias."""
    W = sae.W_dec.detach().double()
    return normalizer.inverse(W) - normalizer.inverse(torch.zeros_like(W[:1]))


@torch.no_grad()
def stitching(
    small, large, store: ActivationStore, hook: str, *, max_tokens: int = 1_000_000, batch: int = 4096
) -> dict:
    """Stitching fractions of `large` into `small`, each a (sae, checkpoint config) pair."""
    (sae_s, cfg_s), (sae_l, cfg_l) = small, large
    norm_s, norm_l = checkpoint_normalizer(cfg_s), checkpoint_normalizer(cfg_l)
    K = sae_l.cfg.d_sae
    device = next(sae_l.parameters()).device
    atoms = atoms_in_store_units(sae_l, norm_l)  # z^L_j (L's own units) times atoms[j] = j's contribution
    norms2 = (atoms**2).sum(1)
    sq = torch.zeros(K, dtype=torch.float64, device=device)
    cross = torch.zeros(K, dtype=torch.float64, device=device)
    sse_s, n = 0.0, 0
    for rows in iter_rows(store, hook, "eval", max_tokens=max_tokens, batch=batch, device=device):
        e_s = (rows.x - reconstruct(sae_s, norm_s, rows.x)).double()
        code = encode_rows(sae_l, norm_l, rows).code
        sq += code.sum_sq(K) * norms2
        cross += (code.dense(K).double() * (e_s @ atoms.T)).sum(0)
        sse_s += float((e_s**2).sum())
        n += len(rows)
    if n == 0:
        raise UsageError(f"{store.loc.display} has an empty evaluation split")
    d_mse = (sq - 2 * cross).cpu().numpy() / n
    tol = 1e-9 * sse_s / n
    novel, recon = d_mse < -tol, d_mse > tol
    cos = (
        (
            torch.nn.functional.normalize(sae_l.W_dec.double(), dim=1)
            @ torch.nn.functional.normalize(sae_s.W_dec.double(), dim=1).T
        )
        .max(1)
        .values.cpu()
        .numpy()
    )
    heuristic = cos < 0.7
    energy = sq.cpu().numpy() / n
    Ks = sae_s.cfg.d_sae
    margins = {
        str(m): {"novel": float((d_mse < -m * energy).mean()), "reconstruction": float((d_mse > m * energy).mean())}
        for m in MARGINS
    }
    return {
        "novel_fraction": float(novel.mean()),
        "reconstruction_fraction": float(recon.mean()),
        "no_change_fraction": float((~novel & ~recon).mean()),
        "never_fired_fraction": float((sq.cpu().numpy() == 0).mean()),
        "cosine_heuristic_novel_fraction": float(heuristic.mean()),
        "heuristic_agreement": float((heuristic == novel).mean()),
        "novel_fraction_below_small": float(novel[:Ks].mean()) if Ks < K else float(novel.mean()),
        "novel_fraction_above_small": float(novel[Ks:].mean()) if Ks < K else None,
        "margins": margins,
        "tokens": n,
        "d_sae_small": sae_s.cfg.d_sae,
        "d_sae_large": K,
    }
