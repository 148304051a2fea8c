"""OSAE against fixed and random Matryoshka, BatchTopK and TopK on the embedded model (OSAE paper 4.2), with
the controls a reviewer asks for: TopK and BatchTopK re-sorted post hoc (by E[z^2] and by frequency),
Matryoshka on BatchTopK (the dictionary_learning / SAELens recipe) beside the per-token variant, and random
Matryoshka with Nabeshima's per-step EMA re-sort. Every SAE trains with osae's defaults (optimizer, learning
rate from K, warm-up and dead window scaled to the run) except the settings named here.
"""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

from osae.evaluate.consistency import match, prefix_curves
from osae.evaluate.run import display_names, evaluate, public
from osae.harvest import HarvestConfig, harvest
from osae.train.checkpoint import load_frozen
from osae.train.config import SAESpec, TrainConfig

from .common import metrics_curve, permuted, train

LM_K, LM_k = 1024, 16
WIDTHS = [32, 128, 256, 512, 1024]  # methods.md 7 #5, scaled from K = 4096 to K = 1024
SECOND_SOURCE_PACKAGES = ("numpy", "scipy", "matplotlib", "transformers")
BASE = {"d_sae": LM_K, "k": LM_k}
# label -> (run directory group, architecture, settings, sources): one run directory per group, because
# the SAEs of one run need distinct names (arch, K, k, seed).
VARIANTS = {
    "osae": ("main", "osae", {"prefix_law": "piecewise", "prefix_widths": WIDTHS}, "ab"),
    "matryoshka": ("main", "matryoshka", {"widths": WIDTHS, "selection": "token"}, "ab"),
    "matryoshka-random": ("main", "matryoshka-random", {"groups": 5, "selection": "token"}, "ab"),
    "batchtopk": ("main", "batchtopk", {}, "ab"),
    "topk": ("main", "topk", {}, "ab"),
    "matryoshka-batch": ("variants", "matryoshka", {"widths": WIDTHS, "selection": "batch"}, "a"),
    "matryoshka-random-ema": (
        "variants",
        "matryoshka-random",
        {"groups": 5, "selection": "token", "reorder_ema": 0.95},
        "a",
    ),
}
LABELS = {
    "osae": "OSAE",
    "matryoshka": "Fixed MSAE",
    "matryoshka-batch": "Fixed MSAE on BatchTopK",
    "matryoshka-random": "Random MSAE",
    "matryoshka-random-ema": "Random MSAE + EMA re-sort",
    "batchtopk": "BatchTopK",
    "topk": "TopK",
    "batchtopk-ea2": "BatchTopK sorted by E[z^2]",
    "batchtopk-freq": "BatchTopK sorted by frequency",
    "topk-ea2": "TopK sorted by E[z^2]",
    "topk-freq": "TopK sorted by frequency",
}
CONTROLS = [f"{a}-{by}" for a in ("topk", "batchtopk") for by in ("ea2", "freq")]


def second_source(path: Path) -> Path:
    """Python code from outside the standard library (installed third-party packages) as a .jsonl file."""
    if path.exists():
        return path
    import importlib

    files = []
    for name in SECOND_SOURCE_PACKAGES:
        root = Path(importlib.import_module(name).__file__).parent
        files += sorted(p for p in root.rglob("*.py") if "tests" not in p.parts)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for p in files:
            text = p.read_text(errors="replace")
            if text.strip():
                f.write(json.dumps({"text": text, "file": str(p.relative_to(p.parents[len(p.parts) - 2]))}) + "\n")
    tmp.replace(path)
    return path


def harvest_sources(out: Path, tokens: int) -> dict[str, Path]:
    """Source A (the standard library, the embedded model's training text) and B (third-party packages)."""
    datasets = {"a": "python-stdlib", "b": str(second_source(out / "third-party-python.jsonl"))}
    stores = {}
    for key, dataset in datasets.items():
        stores[key] = out / f"lm-{key}.zarr"
        harvest(HarvestConfig(out=str(stores[key]), layers=[3], dataset=dataset, tokens=tokens, eval_fraction=0.05))
    return stores


def checkpoints(out: Path, source: str, seeds: int) -> dict[str, list[Path]]:
    """label -> the checkpoint of every seed, for the trained families of `source`."""
    found = {}
    for label, (group, arch, settings, sources) in VARIANTS.items():
        if source in sources:
            names = [SAESpec(arch, s, {**BASE, **settings}).name for s in range(seeds)]
            found[label] = [out / f"lm-{source}-{group}" / name for name in names]
    return found


def fit_source(out: Path, store: Path, source: str, seeds: int, tokens: int) -> None:
    groups: dict[str, list[SAESpec]] = {}
    for group, arch, settings, sources in VARIANTS.values():
        if source in sources:
            groups.setdefault(group, []).extend(SAESpec(arch, s, {**BASE, **settings}) for s in range(seeds))
    for group, saes in groups.items():
        train(TrainConfig(store=str(store), out=str(out / f"lm-{source}-{group}"), saes=saes, tokens=tokens))


def with_controls(found: dict[str, list[Path]], store: Path) -> dict[str, list[Path]]:
    for control in CONTROLS:
        arch, by = control.rsplit("-", 1)
        found[control] = [permuted(c, store, by, 200_000) for c in found[arch]]
    return found


def within(found: dict[str, list[Path]], store: Path) -> dict:
    """Per family: its SAEs' metrics and its seed pairs (Stab, Ord, prefix curves) on the source's held-out rows."""
    result = {}
    for label, ckpts in found.items():
        r = public(evaluate([str(c) for c in ckpts], str(store), use_model=False, max_tokens=50_000, z_tokens=20_000))
        result[label] = {"saes": r["saes"], "pairs": r["pairs"]}
    return result


def across(a: dict[str, list[Path]], b: dict[str, list[Path]]) -> dict:
    """Per family trained on both sources: every (seed on A, seed on B) pair, matched on the decoders."""
    result = {}
    for label in [x for x in a if x in b]:
        rows = []
        for (sa, ca), (sb, cb) in product(enumerate(a[label]), enumerate(b[label])):
            Da, Db = load_frozen(ca)[0].W_dec, load_frozen(cb)[0].W_dec
            m = match(Da, Db)
            rows.append({"a": sa, "b": sb, "stab": m.stab, "ord": m.ord, "prefix": prefix_curves(Da, Db)})
        result[label] = rows
    return result


def training_curves(found: dict[str, list[Path]]) -> dict:
    """label -> seed -> (tokens, training FVU) from metrics.jsonl: whether the families converged."""
    return {label: [metrics_curve(c) for c in ckpts] for label, ckpts in found.items() if label not in CONTROLS}


def detail(found: dict[str, list[Path]], store: Path, lm_tokens: int) -> dict:
    """Seed 0 of every family on source A with the model: CE / KL, progressive coding, power laws."""
    paths = {label: ckpts[0] for label, ckpts in found.items()}
    r = evaluate([str(p) for p in paths.values()], str(store), max_tokens=50_000, lm_tokens=lm_tokens, z_tokens=20_000)
    names = display_names(list(paths.values()))
    by_label = {label: public(r)["saes"][names[p]] for label, p in paths.items()}
    ea2 = {label: r["_figures"]["ea2"][names[p]] for label, p in paths.items()}
    freq = {label: r["_figures"]["freq"][names[p]] for label, p in paths.items()}
    return {"saes": by_label, "ea2": ea2, "freq": freq}


def run_lm(out: Path, stores: dict[str, Path], seeds: dict[str, int], tokens: int, lm_tokens: int) -> dict:
    found = {}
    for source, store in stores.items():
        fit_source(out, store, source, seeds[source], tokens)
        found[source] = with_controls(checkpoints(out, source, seeds[source]), store)
    return {
        "within": {source: within(found[source], store) for source, store in stores.items()},
        "across": across(found["a"], found["b"]),
        "curves": training_curves(found["a"]),
        "detail": detail(found["a"], stores["a"], lm_tokens),
        "seeds": seeds,
        "train_tokens": tokens,
        "second_source": list(SECOND_SOURCE_PACKAGES),
    }
