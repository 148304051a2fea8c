"""Summarise the demo run: reconstruction on held-out tokens, and decoder consistency across seeds."""

import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from osae.evaluate.consistency import prefix_curves, stab_ord
from osae.store import ActivationStore
from osae.store.loader import iter_split_rows
from osae.store.reader import to_float32
from osae.train.checkpoint import load_frozen

run, store_path = Path(sys.argv[1]), sys.argv[2]
store = ActivationStore(store_path)
hook = store.resolve_hook(None)
x = torch.from_numpy(np.concatenate([to_float32(r, store.dtype(hook)) for _, r in iter_split_rows(store, hook, "eval", 20000)]))
saes = {d.name: load_frozen(d) for d in sorted(run.iterdir()) if (d / "config.json").exists()}
print(f"\n{'SAE':28s} {'FVU (held out)':>15s} {'L0':>6s}")
for name, (sae, cfg) in saes.items():
    s = cfg["normalization"].get("scale", 1.0)
    with torch.no_grad():
        code = sae.encode(x * s)
        recon = sae.decode(code) / s
    fvu = float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    l0 = float(code.l0().float().mean()) if hasattr(code, "l0") else float((code > 0).sum(1).float().mean())
    print(f"{name:28s} {fvu:15.3f} {l0:6.1f}")
print(f"\n{'seed pair':44s} {'Stab':>6s} {'Ord':>6s}  {'Ord of the first 64 atoms':>26s}")
for arch in ("osae", "batchtopk"):
    names = [n for n in saes if n.startswith(arch + "-")]
    for a, b in combinations(names, 2):
        stab, ord_ = stab_ord(saes[a][0].W_dec, saes[b][0].W_dec)
        p64 = prefix_curves(saes[a][0].W_dec, saes[b][0].W_dec, [64])[64]["ord"]
        print(f"{a + ' / ' + b:44s} {stab:6.3f} {ord_:6.3f}  {p64:26.3f}")
