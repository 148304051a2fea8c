"""Reproduce the papers' experiments at CPU scale and write docs/results.md with its plots.

    bash scripts/reproduce.sh            # = python scripts/reproduce.py after the usual set-up

Five experiments (methods.md sections 5-6, scaled down): the Gaussian toy with every architecture and 5
seeds; OSAE against fixed and random Matryoshka and BatchTopK on the embedded model, 5 seeds on each of two
text sources; stitching between two dictionary sizes; progressive coding of a permuted TopK against the
ordered dictionaries; HybridOrder against ReLU-L1. Every stage is cached under --out (stores, runs, JSON),
so an interrupted run continues where it stopped; delete a stage's files to redo it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from itertools import product
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from osae.evaluate.consistency import match, prefix_curves
from osae.evaluate.permute import permute_checkpoint
from osae.evaluate.report import (
    _ci95,
    matching_scatter,
    power_law_plot,
    progressive_plot,
)
from osae.evaluate.run import _json_default, evaluate, public
from osae.harvest import HarvestConfig, harvest
from osae.store.toy import ToyConfig, write_toy_store
from osae.train.checkpoint import load_frozen
from osae.train.config import SAESpec, TrainConfig
from osae.train.fit import fit

log = logging.getLogger("reproduce")

TOY_EPOCH = 100_000 // 1024  # steps per epoch of the toy (N = 100,000, batch 1024)
LM_K, LM_k = 1024, 16
LM_WIDTHS = [32, 128, 256, 512, 1024]  # methods.md 7 #5 scaled from K = 4096 to K = 1024
LM_FAMILIES = {"osae": "OSAE", "matryoshka": "Fixed MSAE", "matryoshka-random": "Random MSAE", "batchtopk": "BatchTopK"}
SEEDS = list(range(5))
SECOND_SOURCE_PACKAGES = ("numpy", "scipy", "matplotlib", "transformers")


# -- 1. the toy ---------------------------------------------------------------------------------
def toy_specs(seeds) -> list[SAESpec]:
    no_aux = {"d_sae": 100, "k": 5, "aux_k_coef": 0.0}
    specs = []
    for s in seeds:
        specs += [
            # k warm-up from K over 3 epochs, unit sweeping from epoch 6, one unit every 8 steps.
            SAESpec("osae", s, {**no_aux, "k_init": 100, "k_warmup_steps": 3 * TOY_EPOCH, "sweep_start": 6 * TOY_EPOCH,
                                "sweep_every": 8}, lr=3e-3),
            SAESpec("topk", s, no_aux, lr=3e-3),
            SAESpec("matryoshka", s, {**no_aux, "widths": [6, 12, 25, 50, 100], "selection": "token"}, lr=3e-3),
            SAESpec("matryoshka-random", s, {**no_aux, "groups": 5, "selection": "token"}, lr=3e-3),
            SAESpec("batchtopk", s, no_aux, lr=3e-3),
            SAESpec("relu", s, {"d_sae": 100, "l1_coef": 0.1, "l1_warmup_steps": 2 * TOY_EPOCH}, lr=3e-3),
            SAESpec("hybridorder", s, {"d_sae": 100, "l1_coef": 0.1, "reorder_start": 2 * TOY_EPOCH,
                                       "reorder_every": TOY_EPOCH}, lr=3e-3),
        ]
    return specs


def run_toy(out: Path, epochs: int) -> dict:
    cached = out / "toy.json"
    if cached.exists():
        return json.loads(cached.read_text())
    store = out / "toy.zarr"
    if not (store / "zarr.json").exists():
        write_toy_store(store, ToyConfig())
    cfg = TrainConfig(store=str(store), out=str(out / "toy-run"), saes=toy_specs(SEEDS), tokens=epochs * TOY_EPOCH * 1024,
                      batch_size=1024, normalization="none", lr_warmup_steps=50, log_every=200)
    t0 = time.time()
    fit(resume=cfg.out) if (out / "toy-run" / "run_state.json").exists() else fit(cfg)
    train_s = time.time() - t0
    result = evaluate([cfg.out], str(store), use_model=False, max_tokens=10_000, z_tokens=10_000)
    matching_scatter({k: v for k, v in result["_figures"]["matchings"].items() if k.startswith(("osae", "topk"))},
                     out)  # writes out/matching.png
    (out / "matching.png").replace(out / "toy_matching.png")
    summary = {"train_seconds": train_s, "epochs": epochs, **public(result)}
    cached.write_text(json.dumps(summary, default=_json_default))
    return summary


# -- 2-5. the embedded model ----------------------------------------------------------------------
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


def lm_specs(source: str) -> list[SAESpec]:
    base = {"d_sae": LM_K, "k": LM_k}
    specs = []
    for s in SEEDS:
        specs += [
            # methods.md 7 #4 and #8: OSAE with the piecewise law on the Matryoshka groups, no sweeping;
            # Matryoshka with per-token TopK.
            SAESpec("osae", s, {**base, "prefix_law": "piecewise", "prefix_widths": LM_WIDTHS}),
            SAESpec("matryoshka", s, {**base, "widths": LM_WIDTHS, "selection": "token"}),
            SAESpec("matryoshka-random", s, {**base, "groups": 5, "selection": "token"}),
            SAESpec("batchtopk", s, base),
        ]
    if source == "a":
        specs += [
            SAESpec("topk", 0, base),  # progressive coding: permuted by E[z^2] afterwards
            SAESpec("osae", 0, {"d_sae": 4 * LM_K, "k": LM_k, "prefix_law": "piecewise",
                                "prefix_widths": [w * 4 for w in LM_WIDTHS]}),  # stitching: the larger size
            SAESpec("batchtopk", 0, {"d_sae": 4 * LM_K, "k": LM_k}),
            SAESpec("relu", 0, {"d_sae": 256, "l1_coef": 5.0}),  # HybridOrder's baseline, d_sae = d
            SAESpec("hybridorder", 0, {"d_sae": 256, "l1_coef": 5.0}),
        ]
    return specs


def run_lm(out: Path, tokens: int, train_tokens: int) -> dict:
    cached = out / "lm.json"
    if cached.exists():
        return json.loads(cached.read_text())
    sources = {"a": "python-stdlib", "b": str(second_source(out / "third-party-python.jsonl"))}
    timings = {}
    for key, dataset in sources.items():
        store = out / f"lm-{key}.zarr"
        t0 = time.time()
        harvest(HarvestConfig(out=str(store), layers=[3], dataset=dataset, tokens=tokens, eval_fraction=0.05))
        timings[f"harvest_{key}"] = time.time() - t0
        run = out / f"lm-{key}-run"
        t0 = time.time()
        if (run / "run_state.json").exists():
            fit(resume=str(run))
        else:
            fit(TrainConfig(store=str(store), out=str(run), saes=lm_specs(key), tokens=train_tokens, batch_size=1024,
                            lr_warmup_steps=100, log_every=200))
        timings[f"fit_{key}"] = time.time() - t0
    tk = out / "lm-a-run" / f"topk-K{LM_K}-k{LM_k}-s0"
    permuted = out / f"topk-K{LM_K}-k{LM_k}-ea2"
    if not (permuted / "config.json").exists():
        permute_checkpoint(tk, str(out / "lm-a.zarr"), permuted, by="ea2", max_tokens=200_000)
    t0 = time.time()
    within = {}
    for key in sources:
        run = out / f"lm-{key}-run"
        ckpts = [str(run / f"{arch}-K{LM_K}-k{LM_k}-s{s}") for arch, s in product(LM_FAMILIES, SEEDS)]
        within[key] = public(evaluate(ckpts, str(out / f"lm-{key}.zarr"), use_model=False, max_tokens=50_000,
                                      z_tokens=20_000))
    extra = [out / "lm-a-run" / n for n in (f"topk-K{LM_K}-k{LM_k}-s0", f"osae-K{LM_K}-k{LM_k}-s0",
                                            f"matryoshka-K{LM_K}-k{LM_k}-s0", f"osae-K{4 * LM_K}-k{LM_k}-s0",
                                            f"batchtopk-K{LM_K}-k{LM_k}-s0", f"batchtopk-K{4 * LM_K}-k{LM_k}-s0",
                                            "relu-K256-kNA-s0", "hybridorder-K256-kNA-s0")] + [permuted]
    detail = evaluate([str(p) for p in extra], str(out / "lm-a.zarr"), max_tokens=50_000, lm_tokens=20_000, z_tokens=20_000)
    power_law_plot({k: v for k, v in detail["_figures"]["ea2"].items() if "K1024" in k or "ea2" in k}, out)
    for name, ea2 in detail["_figures"]["ea2"].items():
        # -1: importance falls along the index (an ordered dictionary); about 0: no order.
        detail["saes"][name]["index_importance_spearman"] = float(spearmanr(np.arange(len(ea2)), ea2).statistic)
    timings["evaluate"] = time.time() - t0
    across = {}
    for arch in LM_FAMILIES:
        rows = []
        for sa, sb in product(SEEDS, SEEDS):
            Da = load_frozen(out / "lm-a-run" / f"{arch}-K{LM_K}-k{LM_k}-s{sa}")[0].W_dec
            Db = load_frozen(out / "lm-b-run" / f"{arch}-K{LM_K}-k{LM_k}-s{sb}")[0].W_dec
            m = match(Da, Db)
            rows.append({"a": sa, "b": sb, "stab": m.stab, "ord": m.ord, "prefix": prefix_curves(Da, Db)})
        across[arch] = rows
    summary = {"timings": timings, "within": within, "across": across, "detail": public(detail),
               "sources": {k: v for k, v in sources.items()}, "tokens": tokens, "train_tokens": train_tokens}
    cached.write_text(json.dumps(summary, default=_json_default))
    return summary


# -- the report -----------------------------------------------------------------------------------
def _family(name: str) -> str:
    return name.rsplit("-K", 1)[0]


def _mean_std(values) -> str:
    v = [x for x in values if x is not None]
    return f"{np.mean(v):.3f} ({np.std(v, ddof=1) if len(v) > 1 else 0:.3f})" if v else "n/a"


def toy_table(toy: dict) -> tuple[str, dict]:
    paper = {"topk": ("0.572", "0.479", "0.0162", "0.0257"), "matryoshka": ("0.538", "0.502", "0.119", "0.0339"),
             "matryoshka-random": ("0.531", "0.480", "0.0544", "0.0309"), "osae": ("0.664", "0.814", "0.734", "0.00725")}
    names = {"topk": "Vanilla (top-m)", "matryoshka": "Fixed MSAE", "matryoshka-random": "Random MSAE", "osae": "OSAE",
             "batchtopk": "BatchTopK", "relu": "ReLU-L1", "hybridorder": "HybridOrder"}
    lines = ["| model | Stab(D,D') | Stab(D,D*) | Ord(D,D*) | MSE per element | FVU | L0 | Ord(D,D') | Stab_Z / Ord_Z | "
             "paper: Stab(D,D') / Stab(D,D*) / Ord(D,D*) / MSE |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    means = {}
    for arch, label in names.items():
        saes = [m for n, m in toy["saes"].items() if _family(n) == arch]
        pairs = [p for p in toy["pairs"] if _family(p["a"]) == arch]
        means[arch] = {k: float(np.mean([m[k] for m in saes])) for k in ("stab_gt", "ord_gt", "mse", "fvu", "l0")}
        means[arch]["stab_pair"] = float(np.mean([p["stab"] for p in pairs]))
        ref = " / ".join(paper[arch]) if arch in paper else "not in Table 1"
        mse = [m["mse"] for m in saes]
        lines.append(f"| {label} | {_mean_std([p['stab'] for p in pairs])} | {_mean_std([m['stab_gt'] for m in saes])} | "
                     f"{_mean_std([m['ord_gt'] for m in saes])} | {np.mean(mse):.2e} ({np.std(mse, ddof=1):.1e}) | "
                     f"{_mean_std([m['fvu'] for m in saes])} | {np.mean([m['l0'] for m in saes]):.2f} | "
                     f"{np.mean([p['ord'] for p in pairs]):.3f} | {np.mean([p['stab_z'] for p in pairs]):.3f} / "
                     f"{np.mean([p['ord_z'] for p in pairs]):.3f} | {ref} |")
    return "\n".join(lines), means


def curve_stats(curves: list[dict], key: str) -> tuple[list[int], list[float], list[float]]:
    ps = sorted({int(p) for c in curves for p in c})
    vals = [[c[str(p)][key] if str(p) in c else c[p][key] for c in curves] for p in ps]
    return ps, [float(np.mean(v)) for v in vals], [_ci95(v) for v in vals]


def lm_prefix_plot(lm: dict, path: Path) -> dict:
    """Ord_p and Stab_p (mean, 95% CI over pairs) within source A, within source B, and across them."""
    from osae.evaluate.report import _plt, _save

    plt = _plt()
    groups = {"within source A (10 pairs)": lambda arch: [p["prefix"] for p in lm["within"]["a"]["pairs"] if _family(p["a"]) == arch],
              "within source B (10 pairs)": lambda arch: [p["prefix"] for p in lm["within"]["b"]["pairs"] if _family(p["a"]) == arch],
              "across sources, other seed (20 pairs)": lambda arch: [r["prefix"] for r in lm["across"][arch] if r["a"] != r["b"]],
              "across sources, same seed (5 pairs)": lambda arch: [r["prefix"] for r in lm["across"][arch] if r["a"] == r["b"]]}
    fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 7), sharey="row")
    finals = {}
    for col, (title, pick) in enumerate(groups.items()):
        for arch, label in LM_FAMILIES.items():
            curves = pick(arch)
            for row, key in enumerate(("ord", "stab")):
                ps, mean, half = curve_stats(curves, key)
                axes[row, col].plot(ps, mean, marker=".", label=label)
                axes[row, col].fill_between(ps, np.subtract(mean, half), np.add(mean, half), alpha=0.2)
                finals[(title, arch, key)] = dict(zip(ps, mean))
        axes[0, col].set_title(title, fontsize=9)
        for row, key in enumerate(("Ord_p", "Stab_p")):
            axes[row, col].set_xscale("log", base=2)
            axes[row, col].grid(alpha=0.3)
            axes[row, 0].set_ylabel(key)
            axes[1, col].set_xlabel("prefix length p")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return finals


def write_results(toy: dict, lm: dict, out: Path, docs: Path, machine: str) -> None:
    figs = docs / "results"
    figs.mkdir(parents=True, exist_ok=True)
    for name in ("toy_matching.png", "power_law.png"):
        if (out / name).exists():
            (figs / name).write_bytes((out / name).read_bytes())
    table, toy_means = toy_table(toy)
    finals = lm_prefix_plot(lm, figs / "lm_prefix_curves.png")
    detail = lm["detail"]
    progressive_plot({"saes": {n: m for n, m in detail["saes"].items()
                               if n.startswith(("topk", "osae-K1024", "matryoshka"))}}, figs)
    d = detail["saes"]
    text = (docs / "results.template.md").read_text()
    verdicts = {}
    o, others = toy_means["osae"], {a: m for a, m in toy_means.items() if a != "osae"}
    verdicts["toy_ord"] = ("agrees" if all(o["ord_gt"] > m["ord_gt"] + 0.3 for m in others.values()) else "disagrees")
    verdicts["toy_stab_gt"] = ("agrees" if all(o["stab_gt"] >= toy_means[a]["stab_gt"] for a in ("topk", "matryoshka", "matryoshka-random"))
                               else "does not agree")
    verdicts["toy_mse"] = ("agrees" if o["mse"] <= min(toy_means[a]["mse"] for a in ("topk", "matryoshka", "matryoshka-random"))
                           else "does not agree")
    def final(title, arch, key, p):
        return finals[(title, arch, key)].get(p, float("nan"))
    lm_lines = ["| family | Ord_K within A | Ord_K within B | Ord_K across (other seed) | Ord_K across (same seed) | Ord_16 within A | Stab_K within A | Stab_K across (other seed) |",
                "|---|---|---|---|---|---|---|---|"]
    titles = list(dict.fromkeys(t for t, _, _ in finals))
    for arch, label in LM_FAMILIES.items():
        lm_lines.append(f"| {label} | {final(titles[0], arch, 'ord', LM_K):.3f} | {final(titles[1], arch, 'ord', LM_K):.3f} | "
                        f"{final(titles[2], arch, 'ord', LM_K):.3f} | {final(titles[3], arch, 'ord', LM_K):.3f} | "
                        f"{final(titles[0], arch, 'ord', 16):.3f} | {final(titles[0], arch, 'stab', LM_K):.3f} | "
                        f"{final(titles[2], arch, 'stab', LM_K):.3f} |")
    recon = ["| family (source A, 5 seeds) | FVU | L0 | dead |", "|---|---|---|---|"]
    for arch, label in LM_FAMILIES.items():
        ms = [m for n, m in lm["within"]["a"]["saes"].items() if _family(n) == arch]
        recon.append(f"| {label} | {_mean_std([m['fvu'] for m in ms])} | {np.mean([m['l0'] for m in ms]):.1f} | "
                     f"{_mean_std([m['dead_fraction'] for m in ms])} |")
    stitch = ["| architecture | small -> large | novel | reconstruction | no change |", "|---|---|---|---|---|"]
    for s in detail["stitching"]:
        stitch.append(f"| {_family(s['small'])} | {s['small']} -> {s['large']} | {s['novel_fraction']:.3f} | "
                      f"{s['reconstruction_fraction']:.3f} | {s['no_change_fraction']:.3f} |")
    prog = ["| SAE | " + " | ".join(f"G={g}" for g in (16, 64, 256, 1024)) + " | power-law exponent (R^2) |",
            "|---|---|---|---|---|---|"]
    for n in sorted(d):
        if n.startswith(("topk", "osae-K1024", "matryoshka")):
            m = d[n]
            fv, ce = m.get("progressive_fvu", {}), m.get("progressive_ce") or {}
            cells = [f"{fv.get(str(g), fv.get(g, float('nan'))):.3f} / {ce.get(str(g), ce.get(g, float('nan'))):.3f}" for g in (16, 64, 256, 1024)]
            prog.append(f"| {n} | " + " | ".join(cells) + f" | {m['power_law_exponent']:.2f} ({m['power_law_r2']:.2f}) |")
    ho = ["| SAE | FVU | cosine | L0 | dead | CE recovered | KL | Spearman(index, E[z^2]) |", "|---|---|---|---|---|---|---|---|"]
    for n in ("relu-K256-kNA-s0", "hybridorder-K256-kNA-s0"):
        m = d[n]
        ho.append(f"| {n} | {m['fvu']:.3f} | {m['cosine']:.3f} | {m['l0']:.1f} | {m['dead_fraction']:.3f} | "
                  f"{m['ce_loss_recovered']:.3f} | {m['kl']:.4f} | {m['index_importance_spearman']:.3f} |")
    osae_a, btk_a = final(titles[0], "osae", "ord", LM_K), final(titles[0], "batchtopk", "ord", LM_K)
    verdicts["lm_ord"] = "agrees" if osae_a > max(final(titles[0], a, "ord", LM_K) for a in LM_FAMILIES if a != "osae") else "does not agree"
    filled = text.format(
        machine=machine, toy_table=table, toy_epochs=toy["epochs"], toy_minutes=toy["train_seconds"] / 60,
        lm_table="\n".join(lm_lines), lm_recon="\n".join(recon), stitch_table="\n".join(stitch),
        prog_table="\n".join(prog), ho_table="\n".join(ho), train_tokens=lm["train_tokens"], tokens=lm["tokens"],
        osae_ord=osae_a, btk_ord=btk_a, timings=", ".join(f"{k} {v / 60:.1f} min" for k, v in lm["timings"].items()),
        **verdicts)
    (docs / "results.md").write_text(filled)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/reproduce", help="Working directory (stores, runs, cached results).")
    ap.add_argument("--docs", default="docs", help="Where results.md and results/*.png go.")
    ap.add_argument("--toy-epochs", type=int, default=20)
    ap.add_argument("--lm-tokens", type=int, default=1_200_000, help="Tokens harvested per text source.")
    ap.add_argument("--train-tokens", type=int, default=1_000_000, help="Training tokens per SAE.")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    toy = run_toy(out, args.toy_epochs)
    lm = run_lm(out, args.lm_tokens, args.train_tokens)
    import platform

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    write_results(toy, lm, out, Path(args.docs), machine)
    print(f"wrote {args.docs}/results.md")


if __name__ == "__main__":
    main()
