"""How dead are an SAE's "dead" latents? Firing counts over a store's splits, not only the held-out one.

A latent that fires once in 100k tokens reads as dead on a 114k-token held-out split about a third of the
time, so a small split's dead fraction mixes rare latents with dead ones. This counts, for each checkpoint and
split, the share of latents that fire fewer than c times for several c (c = 1 is "never fires").

    python benchmarks/rare_latents.py --store acts.zarr runs/topk/topk-K16384-k32-s0 [more checkpoints]

Prints one JSON line per checkpoint and split. A measurement for docs/fit.md, not a test.
"""

from __future__ import annotations

import argparse
import json

import torch

from osae.evaluate.batches import checkpoint_normalizer, encode_rows
from osae.evaluate.reconstruction import Accumulator
from osae.store import ActivationStore, iter_rows
from osae.train.checkpoint import load_frozen

COUNTS = (1, 2, 5, 10, 100)


def firing_shares(store: ActivationStore, hook: str, sae_dir: str, split: str, max_tokens: int) -> dict:
    """Tokens read, FVU, and the share of latents firing fewer than c times, for each c in COUNTS."""
    sae, cfg = load_frozen(sae_dir)
    normalizer = checkpoint_normalizer(cfg)
    acc = Accumulator(sae.cfg.d_sae, [])
    with torch.no_grad():
        for rows in iter_rows(store, hook, split, max_tokens=max_tokens):
            acc.add(encode_rows(sae, normalizer, rows))
    res = acc.result(store.d_model(hook))
    shares = {f"fired_below_{c}": float((acc.fired < c).mean()) for c in COUNTS}
    return {"sae": sae_dir, "split": split, "n_tokens": res["n_tokens"], "fvu": res["fvu"], **shares}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--store", required=True)
    ap.add_argument("--hook", default=None)
    ap.add_argument("--splits", default="eval,train")
    ap.add_argument("--max-tokens", type=int, default=10_000_000)
    args = ap.parse_args()
    store = ActivationStore(args.store)
    hook = store.resolve_hook(args.hook)
    for sae_dir in args.checkpoints:
        for split in args.splits.split(","):
            print(json.dumps(firing_shares(store, hook, sae_dir, split, args.max_tokens)), flush=True)


if __name__ == "__main__":
    main()
