"""HybridOrder (methods.md 2.8) against the two controls that isolate its claims: the same SAE with its
reorders switched off (same seed, data and adaptive L1: the loss is permutation invariant and Adam is
coordinate-wise, so reordering alone cannot change training), and ReLU-L1 with a constant L1 weight."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from osae.evaluate.consistency import match
from osae.evaluate.run import evaluate, public
from osae.train.checkpoint import load_frozen
from osae.train.config import SAESpec, TrainConfig

from .common import train

D_SAE, L1 = 256, 5.0
NO_REORDERS = 10**9  # tau far above any variance of firing shares (which lie in [0, 1])


def run_hybrid(out: Path, store: Path, tokens: int, batch: int) -> dict:
    steps = tokens // batch
    runs = {
        "hybridorder": (out / "ho-run", SAESpec("hybridorder", 0, {"d_sae": D_SAE, "l1_coef": L1})),
        # reorder_start = the run's length: no step reaches it; tau: no variance trigger
        "no-reorder": (
            out / "ho-control-run",
            SAESpec(
                "hybridorder", 0, {"d_sae": D_SAE, "l1_coef": L1, "reorder_start": steps, "reorder_tau": NO_REORDERS}
            ),
        ),  # fmt: skip
        "relu": (out / "ho-relu-run", SAESpec("relu", 0, {"d_sae": D_SAE, "l1_coef": L1})),
    }
    result = {"saes": {}}
    for label, (run, spec) in runs.items():
        train(TrainConfig(store=str(store), out=str(run), saes=[spec], tokens=tokens, batch_size=batch))
        r = evaluate([str(run / spec.name)], str(store), max_tokens=50_000, lm_tokens=20_000, z_tokens=20_000,
                     progressive_ce=False)  # fmt: skip
        m = next(iter(public(r)["saes"].values()))
        idx = np.arange(D_SAE)
        m["index_frequency_spearman"] = float(spearmanr(idx, next(iter(r["_figures"]["freq"].values()))).statistic)
        m["index_importance_spearman"] = float(spearmanr(idx, next(iter(r["_figures"]["ea2"].values()))).statistic)
        last = json.loads((run / spec.name / "metrics.jsonl").read_text().splitlines()[-1])
        m["reorders"] = last.get("reorders", 0)
        result["saes"][label] = m
    ho, ctrl = (load_frozen(runs[k][0] / runs[k][1].name)[0].W_dec for k in ("hybridorder", "no-reorder"))
    m = match(ho, ctrl)
    result["reordered_vs_not"] = {"stab": m.stab, "ord": m.ord}
    return result
