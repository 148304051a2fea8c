"""Reconstruction and sparsity metrics on the held-out split, in the store's units (methods.md 4.1, 4.9).

Everything is streamed over the evaluation rows with float64 accumulators:
    mse = sum ||x - x_hat||^2 / (N d)     fvu = sum ||x - x_hat||^2 / sum ||x - mu||^2  (mu over the eval rows)
    cosine = mean <x, x_hat> / (||x|| ||x_hat||)     l0, l1, per-latent firing frequency and E[z^2]
and, for ordered dictionaries, the same with only the first G latents kept (the full code, truncated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from osae.errors import UsageError
from osae.evaluate.batches import CodeBatch, iter_codes, reconstruct
from osae.store import ActivationStore, Normalizer, load_rows
from osae.train.architectures import SAE


@dataclass
class Accumulator:
    """Running float64 sums of every reconstruction metric; `add` one batch at a time."""

    d_sae: int
    granularities: list[int]

    def __post_init__(self):
        self.n = 0
        self.sum_x = None
        self.sum_sq = 0.0
        self.sse = 0.0
        self.cos = 0.0
        self.l0 = 0.0
        self.l1 = 0.0
        self.fired = np.zeros(self.d_sae)
        self.ea2 = np.zeros(self.d_sae)
        self.sse_g = {g: 0.0 for g in self.granularities}

    def add(self, b: CodeBatch) -> None:
        x64, r64 = b.x.double(), b.recon.double()
        self.n += len(b)
        s = x64.sum(0).cpu()
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sum_sq += float((x64**2).sum())
        self.sse += float(((x64 - r64) ** 2).sum())
        denom = x64.norm(dim=1) * r64.norm(dim=1)
        self.cos += float(torch.where(denom > 0, (x64 * r64).sum(1) / denom.clamp_min(1e-30), 0).sum())
        self.l0 += float(b.code.l0().sum())
        self.l1 += float(b.code.l1().double().sum())
        self.fired += b.code.fire_counts(self.d_sae).double().cpu().numpy()
        self.ea2 += b.code.sum_sq(self.d_sae).cpu().numpy()
        for g in self.granularities:
            self.sse_g[g] += float(((x64 - b.prefix_recon(g).double()) ** 2).sum())

    def result(self, d_in: int) -> dict:
        n = max(self.n, 1)
        total_var = self.sum_sq - float((self.sum_x**2).sum()) / n
        freq = self.fired / n
        return {
            "n_tokens": self.n,
            "mse": self.sse / (n * d_in),
            "sse_per_token": self.sse / n,
            "fvu": self.sse / total_var,
            "explained_variance": 1 - self.sse / total_var,
            "cosine": self.cos / n,
            "l0": self.l0 / n,
            "l1": self.l1 / n,
            "dead_fraction": float((self.fired == 0).mean()),
            "dense_fraction": float((freq > 0.1).mean()),
            "frequent_fraction": float((freq > 0.01).mean()),
            "progressive_fvu": {int(g): v / total_var for g, v in self.sse_g.items()},
            "freq": freq,
            "ea2": self.ea2 / n,
        }


def default_granularities(d_sae: int) -> list[int]:
    return [g for g in (2**i for i in range(4, 40)) if g < d_sae] + [d_sae]


@torch.no_grad()
def reconstruction_metrics(
    sae: SAE,
    normalizer: Normalizer,
    store: ActivationStore,
    hook: str,
    *,
    max_tokens: int = 1_000_000,
    batch: int = 4096,
    granularities: list[int] | None = None,
) -> dict:
    """Metrics of one SAE on the store's evaluation split, reported in the store's original units (computed on
    the device of the SAE's parameters)."""
    grans = granularities if granularities is not None else default_granularities(sae.cfg.d_sae)
    acc = Accumulator(sae.cfg.d_sae, grans)
    for b in iter_codes(sae, normalizer, store, hook, "eval", max_tokens=max_tokens, batch=batch):
        acc.add(b)
    if acc.n == 0:
        raise UsageError(f"{store.loc.display} has an empty evaluation split; evaluate needs held-out rows")
    return acc.result(store.d_model(hook))


def power_law(values: np.ndarray, top: float = 1.0) -> dict:
    """OLS fit of log10 v_r = a + b log10 r over the positive values sorted decreasingly (methods.md 4.7),
    over the first `top` share of those ranks (the last ranks of a trained SAE bend down, which lowers R^2 of
    a fit over all of them)."""
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    v = v[v > 0]
    v = v[: max(1, int(round(top * len(v))))]
    if len(v) < 3:
        return {"exponent": None, "r2": None, "n": len(v)}
    lr, lv = np.log10(np.arange(1, len(v) + 1)), np.log10(v)
    b, a = np.polyfit(lr, lv, 1)
    pred = a + b * lr
    ss_res, ss_tot = float(((lv - pred) ** 2).sum()), float(((lv - lv.mean()) ** 2).sum())
    return {"exponent": float(b), "intercept": float(a), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else None, "n": len(v)}


@torch.no_grad()
def rsa(
    sae: SAE,
    normalizer: Normalizer,
    store: ActivationStore,
    hook: str,
    *,
    n: int = 1000,
    repeats: int = 5,
    seed: int = 0,
) -> dict:
    """Representational similarity (methods.md 4.8): Spearman correlation between the upper triangles of the
    1 - cos dissimilarity matrices of x and x_hat, over `repeats` disjoint samples of n held-out tokens."""
    from scipy.stats import spearmanr

    x_all = load_rows(store, hook, "eval", max_tokens=n * repeats * 4)
    order = np.random.default_rng(seed).permutation(len(x_all))
    per = min(n, len(x_all) // repeats)
    if per < 3:
        return {"rsa": None, "rsa_std": None, "rsa_n": per}
    iu = np.triu_indices(per, 1)
    values = []
    for i in range(repeats):
        x = x_all[order[i * per : (i + 1) * per]]
        x_hat = reconstruct(sae, normalizer, x)

        def rdm(v):
            u = torch.nn.functional.normalize(v.double(), dim=1)
            return (1 - u @ u.T).numpy()[iu]

        values.append(spearmanr(rdm(x), rdm(x_hat)).statistic)
    return {"rsa": float(np.mean(values)), "rsa_std": float(np.std(values)), "rsa_n": per}
