"""`osae permute`: the post-hoc ordering of the progressive-coding paper (methods.md 2.7).

Importance of latent j on calibration tokens of the training split: E[z_j^2] (`ea2`, the paper's best) or
P(z_j > 0) (`freq`). Latents are sorted by decreasing importance (ties: lower index first) and every
per-latent tensor is permuted; reconstructions are unchanged, only prefix-truncated metrics change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from osae.errors import UsageError
from osae.evaluate.batches import checkpoint_normalizer, iter_codes
from osae.foreign import load_any
from osae.store import ActivationStore, Normalizer
from osae.train.checkpoint import save_frozen

# Keys save_frozen writes itself (the others of the loaded config are carried over).
WRITTEN_BY_SAVE = ("format_version", "osae_version", "architecture", "d_in", "d_sae", "arch_config", "weights_sha256")


@torch.no_grad()
def importance(
    sae, normalizer: Normalizer, store: ActivationStore, hook: str, by: str, max_tokens: int, batch: int = 4096
) -> np.ndarray:
    d_sae = sae.cfg.d_sae
    ea2 = torch.zeros(d_sae, dtype=torch.float64)
    fired = torch.zeros(d_sae, dtype=torch.float64)
    n = 0
    for b in iter_codes(sae, normalizer, store, hook, "train", max_tokens=max_tokens, batch=batch):
        ea2 += b.code.sum_sq(d_sae).cpu()
        fired += b.code.fire_counts(d_sae).double().cpu()
        n += len(b)
    if n == 0:
        raise UsageError(f"{store.loc.display} has no training rows to calibrate the ordering on")
    return ((ea2 if by == "ea2" else fired) / n).numpy()


def permute_checkpoint(
    checkpoint, store_url: str, out, *, by: str = "ea2", max_tokens: int = 1_000_000, format: str | None = None
) -> dict:
    """Write the permuted SAE as an osae checkpoint; `checkpoint` may be of any format osae.foreign reads."""
    if by not in ("ea2", "freq"):
        raise UsageError(f"--by must be ea2 or freq; got {by!r}")
    store = ActivationStore(store_url)
    sae, cfg = load_any(checkpoint, format=format, store=store)
    hook = cfg["hook"]
    if hook not in store.hooks or store.d_model(hook) != sae.cfg.d_in:
        raise UsageError(
            f"{store.loc.display} does not hold hook '{hook}' with d_in={sae.cfg.d_in}; pass the training store"
        )
    score = importance(sae, checkpoint_normalizer(cfg), store, hook, by, max_tokens)
    perm = np.lexsort((np.arange(len(score)), -score))  # decreasing score, ties by original index
    sae.permute_(torch.from_numpy(perm))
    meta = {k: v for k, v in cfg.items() if k not in WRITTEN_BY_SAVE + ("format", "source", "notes")}
    if cfg.get("format", "osae") != "osae":
        meta["source_format"] = cfg["format"]  # the SAE was read from another library's checkpoint
    meta["permuted"] = {
        "by": by,
        "from": str(checkpoint),
        "calibration_tokens": int(max_tokens),
        "permutation": perm.tolist(),
    }
    save_frozen(sae, Path(out), meta)
    return {"out": str(out), "by": by, "moved": int((perm != np.arange(len(perm))).sum())}
