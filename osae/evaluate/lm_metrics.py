"""Model-level metrics (methods.md 4.2): the reconstruction spliced into the model's forward pass.

For held-out windows (whole sequences of the store's evaluation split, rebuilt from `sequences/context`):
clean forward; the SAE's reconstruction (in the store's units) replacing the hook at every stored position
(BOS stays clean); the same positions zero-ablated (and mean-ablated with the store's mean). CE is the mean
next-token cross-entropy over predictions at positions 1..C-2; CE recovered = (CE_abl - CE_sae) /
(CE_abl - CE_clean); KL(clean || spliced) in nats averaged over the same positions.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from osae.errors import UsageError
from osae.harvest.hooks import find_blocks
from osae.progress import progress as progress_bar
from osae.store import ActivationStore, Normalizer, split_intervals
from osae.train.architectures import SAE


def eval_windows(store: ActivationStore, max_tokens: int) -> np.ndarray:
    """Token windows of whole evaluation sequences, up to about `max_tokens` tokens."""
    if not store.has_tokens or "sequences/context" not in store.group:
        what = "no token ids" if not store.has_tokens else "no sequence windows"
        raise UsageError(
            f"{store.loc.display} has {what} (imported without them?); CE and KL need the token windows "
            f"of a harvested store or of an import from sequence-shaped data"
        )
    iv = split_intervals(store, "eval")
    ctx = store.array("sequences/context")
    budget = max(1, max_tokens // max(1, store.context_size or 1))
    starts = store.sequence_starts()
    found: list[np.ndarray] = []
    for lo, hi in zip(iv.lo.tolist(), iv.hi.tolist()):  # eval intervals hold whole sequences only
        found.append(np.arange(np.searchsorted(starts, lo), np.searchsorted(starts, hi)))
        if sum(len(f) for f in found) >= budget:
            break
    seqs = np.concatenate(found)[:budget] if found else np.empty(0, np.int64)
    if not len(seqs):
        raise UsageError(f"{store.loc.display} has an empty evaluation split")
    return ctx.oindex[seqs, :]


@contextmanager
def splice(model, hook: str, layer: int, replace):
    """Within the context, the hook's output passes through `replace(tensor) -> tensor`."""
    blocks, _, attn, mlp = find_blocks(model)
    block = blocks[layer]
    if hook == "resid_pre":

        def pre(mod, args, kwargs):
            if args:
                return (replace(args[0]), *args[1:]), kwargs
            kwargs["hidden_states"] = replace(kwargs["hidden_states"])
            return args, kwargs

        handle = block.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        target = block if hook == "resid_post" else getattr(block, attn if hook == "attn_out" else mlp)

        def post(mod, args, output):
            if isinstance(output, tuple):
                return (replace(output[0]), *output[1:])
            return replace(output)

        handle = target.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


def _clean_pass(model, ids: torch.Tensor, hook: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean logits and the hook's clean output."""
    seen = []

    def keep(x):
        seen.append(x.clone())  # a copy: some models update the block output in place later in the pass
        return x

    with splice(model, hook, layer, keep):
        logits = model(input_ids=ids, use_cache=False).logits.float()
    return logits, seen[0]


def _ce_sum(logits: torch.Tensor, tgt: torch.Tensor) -> float:
    return F.cross_entropy(logits[:, 1:-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum").item()


def _kl_sum(logp_clean: torch.Tensor, logits: torch.Tensor) -> float:
    """Sum over positions of KL(clean || spliced)."""
    logp = F.log_softmax(logits[:, 1:-1], -1)
    return (logp_clean.exp() * (logp_clean - logp)).sum(-1).sum().item()


@torch.no_grad()
def lm_metrics(
    model,
    sae: SAE,
    normalizer: Normalizer,
    store: ActivationStore,
    hook_name: str,
    *,
    max_tokens: int = 200_000,
    batch: int = 16,
    include_bos: bool = False,
    granularities: list[int] | None = None,
    progress: bool = False,
    desc: str = "CE and KL",
) -> dict:
    """CE clean / spliced / ablated, CE recovered and KL; with `granularities`, also the CE of the
    reconstruction from the first G latents of the full code (progressive coding, methods.md 4.9).
    `progress` shows the passes (3 + len(granularities) spliced forwards per window) as they run."""
    info = store.hooks[hook_name]
    hook, layer = info["hook"], int(info["layer"])
    windows = eval_windows(store, max_tokens)
    device = next(model.parameters()).device
    mean = torch.from_numpy(store.stats(hook_name)["mean"]).float().to(device)
    first = 0 if include_bos else 1
    grans = [int(g) for g in granularities or [] if int(g) < sae.cfg.d_sae]
    sums = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_zero": 0.0, "ce_mean": 0.0, "kl_sae": 0.0, "kl_zero": 0.0}
    sums.update({f"ce_g{g}": 0.0 for g in grans})
    n = 0
    bar = progress_bar(len(windows), desc, "seq", enabled=progress)
    for s in range(0, len(windows), batch):
        w = windows[s : s + batch]
        if (w < 0).any():
            raise UsageError("padded evaluation windows are not supported yet for model-level metrics")
        ids = torch.from_numpy(w).long().to(device)
        clean, x = _clean_pass(model, ids, hook, layer)
        part = x[:, first:].float()
        code = sae.encode(normalizer.forward(part.reshape(-1, part.shape[-1])))
        # The hook's input is the same in every spliced run (only the hook's output changes), so the
        # replacements are computed once from the clean pass.
        variants = {"sae": normalizer.inverse(sae.decode(code)), "zero": torch.zeros((), device=device), "mean": mean}
        variants.update({f"g{g}": normalizer.inverse(sae.decode(code, upto=g)) for g in grans})
        tgt = ids[:, 2:]  # predictions at positions 1..C-2 for targets 2..C-1
        logp_clean = F.log_softmax(clean[:, 1:-1], -1)
        sums["ce_clean"] += _ce_sum(clean, tgt)
        for kind, values in variants.items():
            y = x.clone()
            y[:, first:] = values.reshape(part.shape).to(x.dtype) if values.dim() > 1 else values.to(x.dtype)
            with splice(model, hook, layer, lambda _, y=y: y):
                logits = model(input_ids=ids, use_cache=False).logits.float()
            sums[f"ce_{kind}"] += _ce_sum(logits, tgt)
            if kind in ("sae", "zero"):
                sums[f"kl_{kind}"] += _kl_sum(logp_clean, logits)
        n += tgt.numel()
        bar.update(len(w))
    bar.close()
    m = {k: v / n for k, v in sums.items()}
    denom = m["ce_zero"] - m["ce_clean"]

    def recovered(ce_value):
        return (m["ce_zero"] - ce_value) / denom if denom > 0 else None

    out = {
        "ce_loss_clean": m["ce_clean"],
        "ce_loss_spliced": m["ce_sae"],
        "ce_loss_ablated": m["ce_zero"],
        "ce_loss_mean_ablated": m["ce_mean"],
        "delta_ce": m["ce_sae"] - m["ce_clean"],
        "ce_loss_recovered": recovered(m["ce_sae"]),
        "kl": m["kl_sae"],
        "kl_score": (m["kl_zero"] - m["kl_sae"]) / m["kl_zero"] if m["kl_zero"] > 0 else None,
        "lm_tokens": n,
        "lm_windows": len(windows),
    }
    if granularities:
        prog = {g: m[f"ce_g{g}"] for g in grans} | {sae.cfg.d_sae: m["ce_sae"]}
        out["progressive_ce"] = prog
        out["progressive_ce_recovered"] = {g: recovered(v) for g, v in prog.items()}
    return out
