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

from osae.harvest.hooks import find_blocks
from osae.store.normalize import Normalizer
from osae.store.reader import ActivationStore
from osae.store.split import split_intervals
from osae.train.architectures import SAE


def eval_windows(store: ActivationStore, max_tokens: int) -> np.ndarray:
    """Token windows of whole evaluation sequences, up to about `max_tokens` tokens."""
    if not store.has_tokens or "sequences/context" not in store.group:
        raise ValueError(f"{store.loc.display} has no token windows; model-level metrics need a harvested store")
    iv = split_intervals(store, "eval")
    ctx = store.array("sequences/context")
    budget = max(1, max_tokens // max(1, store.context_size or 1))
    found: list[np.ndarray] = []
    for lo, hi in zip(iv.lo.tolist(), iv.hi.tolist()):  # eval intervals hold whole sequences only
        found.append(np.unique(store.read_rows("seq_id", lo, hi)))
        if sum(len(f) for f in found) >= budget:
            break
    if not found:
        raise ValueError(f"{store.loc.display} has an empty evaluation split")
    seqs = np.unique(np.concatenate(found))[:budget]
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


@torch.no_grad()
def lm_metrics(model, sae: SAE, normalizer: Normalizer, store: ActivationStore, hook_name: str, *,
               max_tokens: int = 200_000, batch: int = 16, include_bos: bool = False) -> dict:
    info = store.hooks[hook_name]
    hook, layer = info["hook"], int(info["layer"])
    windows = eval_windows(store, max_tokens)
    device = next(model.parameters()).device
    mean = torch.from_numpy(store.stats(hook_name)["mean"]).float().to(device)
    first = 0 if include_bos else 1
    sums = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_zero": 0.0, "ce_mean": 0.0, "kl_sae": 0.0, "kl_zero": 0.0}
    n = 0
    for s in range(0, len(windows), batch):
        w = windows[s : s + batch]
        if (w < 0).any():
            raise ValueError("padded evaluation windows are not supported yet for model-level metrics")
        ids = torch.from_numpy(w).long().to(device)
        clean = model(input_ids=ids, use_cache=False).logits.float()
        results = {}
        for kind in ("sae", "zero", "mean"):
            def replace(x, kind=kind):
                y = x.clone()
                part = x[:, first:].float()
                if kind == "sae":
                    flat = part.reshape(-1, part.shape[-1])
                    rec = normalizer.inverse(sae.decode(sae.encode(normalizer.forward(flat))))
                    y[:, first:] = rec.reshape(part.shape).to(x.dtype)
                elif kind == "zero":
                    y[:, first:] = 0
                else:
                    y[:, first:] = mean.to(x.dtype)
                return y
            with splice(model, hook, layer, replace):
                results[kind] = model(input_ids=ids, use_cache=False).logits.float()
        # predictions at positions 1..C-2 for targets 2..C-1
        tgt = ids[:, 2:]
        def ce(logits):
            return F.cross_entropy(logits[:, 1:-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum").item()
        logp_clean = F.log_softmax(clean[:, 1:-1], -1)
        def kl(logits):
            logp = F.log_softmax(logits[:, 1:-1], -1)
            return (logp_clean.exp() * (logp_clean - logp)).sum(-1).sum().item()
        sums["ce_clean"] += ce(clean)
        sums["ce_sae"] += ce(results["sae"])
        sums["ce_zero"] += ce(results["zero"])
        sums["ce_mean"] += ce(results["mean"])
        sums["kl_sae"] += kl(results["sae"])
        sums["kl_zero"] += kl(results["zero"])
        n += tgt.numel()
    m = {k: v / n for k, v in sums.items()}
    denom = m["ce_zero"] - m["ce_clean"]
    return {
        "ce_loss_clean": m["ce_clean"], "ce_loss_spliced": m["ce_sae"], "ce_loss_ablated": m["ce_zero"],
        "ce_loss_mean_ablated": m["ce_mean"], "delta_ce": m["ce_sae"] - m["ce_clean"],
        "ce_loss_recovered": (m["ce_zero"] - m["ce_sae"]) / denom if denom > 0 else None,
        "kl": m["kl_sae"], "kl_score": (m["kl_zero"] - m["kl_sae"]) / m["kl_zero"] if m["kl_zero"] > 0 else None,
        "lm_tokens": n, "lm_windows": int(len(windows)),
    }
