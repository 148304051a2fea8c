"""Stitching (OSAE paper appendix D; Leask et al.): how many latents of a 16x larger SAE are new to a small
one, for OSAE and BatchTopK, over several seeds, with every small x large combination (which SAE moves the
fraction), the novel share below and above the small size, and the split under margins."""

from __future__ import annotations

from itertools import product
from pathlib import Path

from osae.evaluate.run import evaluate, public
from osae.evaluate.stitching import stitching
from osae.store import ActivationStore
from osae.train.checkpoint import load_frozen
from osae.train.config import SAESpec, TrainConfig

from .common import train

SMALL, LARGE, k = 256, 4096, 16
ARCHS = ("osae", "batchtopk")
PAPER_NOVEL = {"batchtopk": 0.738, "osae": 0.338}  # OSAE paper, Table 2 (4096 -> 65536 latents)


def spec(arch: str, size: int, seed: int) -> SAESpec:
    settings = {"d_sae": size, "k": k}
    if arch == "osae":  # the piecewise law on the Matryoshka groups, scaled with the size
        settings |= {"prefix_law": "piecewise", "prefix_widths": [size // 32, size // 8, size // 4, size // 2, size]}
    return SAESpec(arch, seed, settings)


def run_stitching(out: Path, store: Path, seeds: int, tokens: int) -> dict:
    run = out / "stitch-run"
    saes = [spec(a, size, s) for s in range(seeds) for a in ARCHS for size in (SMALL, LARGE)]
    train(TrainConfig(store=str(store), out=str(run), saes=saes, tokens=tokens))
    fvu = {
        name: m["fvu"]
        for name, m in public(
            evaluate([str(run)], str(store), use_model=False, max_tokens=100_000, z_tokens=10_000, pairs="seeds")
        )["saes"].items()
    }
    s = ActivationStore(store)
    rows = []
    for seed, small_arch, large_arch in product(range(seeds), ARCHS, ARCHS):
        small, large = spec(small_arch, SMALL, seed), spec(large_arch, LARGE, seed)
        small_sae = load_frozen(run / small.name)
        r = stitching(small_sae, load_frozen(run / large.name), s, small_sae[1]["hook"], max_tokens=200_000)
        rows.append({"seed": seed, "small": small_arch, "large": large_arch, **r})
    return {"fvu": fvu, "stitching": rows, "small": SMALL, "large": LARGE, "seeds": seeds, "tokens": tokens}
