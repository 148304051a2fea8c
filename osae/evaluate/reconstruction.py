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

from osae.store.loader import iter_split_rows
from osae.store.normalize import Normalizer
from osae.store.reader import ActivationStore, to_float32
from osae.train.architectures import SAE
from osae.train.architectures.base import SparseCode


@dataclass
class Accumulator:
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

    def add(self, x: torch.Tensor, recon: torch.Tensor, z: torch.Tensor, recon_g: dict[int, torch.Tensor]) -> None:
        x64, r64 = x.double(), recon.double()
        self.n += len(x)
        s = x64.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sum_sq += float((x64 ** 2).sum())
        self.sse += float(((x64 - r64) ** 2).sum())
        denom = x64.norm(dim=1) * r64.norm(dim=1)
        self.cos += float(torch.where(denom > 0, (x64 * r64).sum(1) / denom.clamp_min(1e-30), 0).sum())
        active = z > 0
        self.l0 += float(active.sum())
        self.l1 += float(z.double().abs().sum())
        self.fired += active.sum(0).double().numpy()
        self.ea2 += (z.double() ** 2).sum(0).numpy()
        for g, rg in recon_g.items():
            self.sse_g[g] += float(((x64 - rg.double()) ** 2).sum())

    def result(self, d_in: int) -> dict:
        n = max(self.n, 1)
        total_var = self.sum_sq - float((self.sum_x ** 2).sum()) / n
        freq = self.fired / n
        return {
            "n_tokens": self.n,
            "mse": self.sse / (n * d_in), "sse_per_token": self.sse / n, "fvu": self.sse / total_var,
            "explained_variance": 1 - self.sse / total_var, "cosine": self.cos / n, "l0": self.l0 / n, "l1": self.l1 / n,
            "dead_fraction": float((self.fired == 0).mean()), "dense_fraction": float((freq > 0.1).mean()),
            "frequent_fraction": float((freq > 0.01).mean()),
            "progressive_fvu": {int(g): v / total_var for g, v in self.sse_g.items()},
            "freq": freq, "ea2": self.ea2 / n,
        }


def default_granularities(d_sae: int) -> list[int]:
    return [g for g in (2 ** i for i in range(4, 40)) if g < d_sae] + [d_sae]


@torch.no_grad()
def reconstruction_metrics(sae: SAE, normalizer: Normalizer, store: ActivationStore, hook: str, *,
                           max_tokens: int = 1_000_000, batch: int = 4096, granularities: list[int] | None = None,
                           device: str = "cpu") -> dict:
    """Metrics of one SAE on the store's evaluation split, reported in the store's original units."""
    grans = granularities if granularities is not None else default_granularities(sae.cfg.d_sae)
    acc = Accumulator(sae.cfg.d_sae, grans)
    for _, rows in iter_split_rows(store, hook, "eval", max_rows=max_tokens):
        x_all = torch.from_numpy(to_float32(rows, store.dtype(hook)))
        for s in range(0, len(x_all), batch):
            x = x_all[s : s + batch].to(device)
            code = sae.encode(normalizer.forward(x))
            recon = normalizer.inverse(sae.decode(code))
            z = code.dense(sae.cfg.d_sae) if isinstance(code, SparseCode) else code
            recon_g = {g: normalizer.inverse(sae.decode(code, upto=g)) for g in grans}
            acc.add(x.cpu(), recon.cpu(), z.cpu(), {g: r.cpu() for g, r in recon_g.items()})
    if acc.n == 0:
        raise ValueError(f"{store.loc.display} has an empty evaluation split; evaluate needs held-out rows")
    return acc.result(store.d_model(hook))


def power_law(values: np.ndarray) -> dict:
    """OLS fit of log10 v_r = a + b log10 r over the positive values sorted decreasingly (methods.md 4.7)."""
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    v = v[v > 0]
    if len(v) < 3:
        return {"exponent": None, "r2": None, "n": len(v)}
    lr, lv = np.log10(np.arange(1, len(v) + 1)), np.log10(v)
    b, a = np.polyfit(lr, lv, 1)
    pred = a + b * lr
    ss_res, ss_tot = float(((lv - pred) ** 2).sum()), float(((lv - lv.mean()) ** 2).sum())
    return {"exponent": float(b), "intercept": float(a), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else None, "n": len(v)}


@torch.no_grad()
def rsa(sae: SAE, normalizer: Normalizer, store: ActivationStore, hook: str, *, n: int = 1000, repeats: int = 5,
        seed: int = 0) -> dict:
    """Representational similarity (methods.md 4.8): Spearman correlation between the upper triangles of the
    1 - cos dissimilarity matrices of x and x_hat, over `repeats` disjoint samples of n held-out tokens."""
    from scipy.stats import spearmanr

    rows = [r for _, r in iter_split_rows(store, hook, "eval", max_rows=n * repeats * 4)]
    x_all = torch.from_numpy(to_float32(np.concatenate(rows), store.dtype(hook)))
    order = np.random.default_rng(seed).permutation(len(x_all))
    per = min(n, len(x_all) // repeats)
    if per < 3:
        return {"rsa": None, "rsa_std": None, "rsa_n": per}
    iu = np.triu_indices(per, 1)
    values = []
    for i in range(repeats):
        x = x_all[order[i * per : (i + 1) * per]]
        x_hat = normalizer.inverse(sae.decode(sae.encode(normalizer.forward(x))))
        def rdm(v):
            u = torch.nn.functional.normalize(v.double(), dim=1)
            return (1 - u @ u.T).numpy()[iu]
        values.append(spearmanr(rdm(x), rdm(x_hat)).statistic)
    return {"rsa": float(np.mean(values)), "rsa_std": float(np.std(values)), "rsa_n": per}
