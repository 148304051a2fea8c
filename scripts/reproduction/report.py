"""docs/results.md from the stages' results: tables, plots with labelled axes, and the computed verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from osae.evaluate.report import _ci95, power_law_plot, progressive_plot
from osae.plotting import pyplot, save_figure

from . import lm as LM
from . import toy as TOY
from .common import STAGES, mean_std
from .stitch import ARCHS, PAPER_NOVEL
from .verdicts import hybrid_verdicts, lm_verdicts, progressive_verdicts, stitch_verdicts, toy_verdicts

PAPER_TOY = {
    "topk": ("0.572", "0.479", "0.0162", "0.0257"),
    "matryoshka": ("0.538", "0.502", "0.119", "0.0339"),
    "matryoshka-random": ("0.531", "0.480", "0.0544", "0.0309"),
    "osae": ("0.664", "0.814", "0.734", "0.00725"),
}
G = 64  # the progressive-coding verdicts' prefix
TEMPLATE = Path(__file__).resolve().parents[2] / "docs" / "results.template.md"


# -- the toy ---------------------------------------------------------------------------------------
def toy_section(toy: dict) -> dict:
    names = {**TOY.NAMES, **TOY.SORTED}
    means = TOY.family_means(toy)
    rows = [
        "| model | lr | Stab(D,D') | Stab(D,D*) | Ord(D,D*) | MSE per element | FVU | L0 | Ord(D,D') | "
        "Stab_Z / Ord_Z | paper: Stab(D,D') / Stab(D,D*) / Ord(D,D*) / MSE |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, fam in toy["families"].items():
        saes, pairs = list(fam["saes"].values()), fam["pairs"]
        arch = label.split("-freq")[0].split("-ea2")[0]
        mse = [s["mse"] for s in saes]
        rows.append(
            f"| {names[label]} | {toy['chosen_lr'][arch]:g} | {mean_std([p['stab'] for p in pairs])} | "
            f"{mean_std([s['stab_gt'] for s in saes])} | {mean_std([s['ord_gt'] for s in saes])} | "
            f"{np.mean(mse):.2e} ({np.std(mse, ddof=1) if len(mse) > 1 else 0:.1e}) | "
            f"{mean_std([s['fvu'] for s in saes])} | {np.mean([s['l0'] for s in saes]):.2f} | "
            f"{means[label]['pair_ord']:.3f} | {means[label]['pair_stab_z']:.3f} / {means[label]['pair_ord_z']:.3f} | "
            f"{' / '.join(PAPER_TOY[label]) if label in PAPER_TOY else 'not in Table 1'} |"
        )
    grid = ["| model | " + " | ".join(f"lr {lr}" for lr in next(iter(toy["grid"].values()))) + " | chosen |",
            "|---|" + "---|" * (len(next(iter(toy["grid"].values()))) + 1)]  # fmt: skip
    for arch, scores in toy["grid"].items():
        grid.append(f"| {names[arch]} | " + " | ".join(f"{v:.2e}" for v in scores.values()) +
                    f" | {toy['chosen_lr'][arch]:g} |")  # fmt: skip
    top = max(float(lr) for lr in next(iter(toy["grid"].values())))
    at_edge = [names[a] for a, lr in toy["chosen_lr"].items() if lr == top]
    edge = (
        f"{', '.join(at_edge)} chose the grid's largest rate ({top:g}): a larger one might reconstruct better still, "
        f"so these families are tuned within the grid, not beyond it."
        if at_edge
        else "Every family's chosen rate lies inside the grid."
    )
    return {"toy_table": "\n".join(rows), "toy_grid": "\n".join(grid), "toy_grid_note": edge,
            "toy_verdicts": "\n".join(toy_verdicts(means, names)), **toy["plan"]}  # fmt: skip


# -- the language model ----------------------------------------------------------------------------
class Curves:
    """Mean prefix curves of every family in each comparison: `curves(title, family, "ord"|"stab", p)`."""

    def __init__(self, lm: dict):
        w, x = lm["within"], lm["across"]
        groups = {
            "within source A": {f: [p["prefix"] for p in v["pairs"]] for f, v in w["a"].items()},
            "within source B": {f: [p["prefix"] for p in v["pairs"]] for f, v in w["b"].items()},
            "across sources, other seed": {f: [r["prefix"] for r in rows if r["a"] != r["b"]] for f, rows in x.items()},
            "across sources, same seed": {f: [r["prefix"] for r in rows if r["a"] == r["b"]] for f, rows in x.items()},
        }
        self.groups = {f"{title} ({len(g['osae'])} pairs)": g for title, g in groups.items()}
        self.titles = list(self.groups)

    def stats(self, title: str, family: str, key: str) -> tuple[list[int], list[float], list[float]]:
        curves = self.groups[title].get(family, [])
        ps = sorted({int(p) for c in curves for p in c})
        vals = [[c[str(p)][key] for c in curves if str(p) in c] for p in ps]
        return ps, [float(np.mean(v)) for v in vals], [_ci95(v) for v in vals]

    def prefixes(self, title: str) -> list[int]:
        return self.stats(title, "osae", "ord")[0]

    def __call__(self, title: str, family: str, key: str, p: int) -> float:
        ps, mean, _ = self.stats(title, family, key)
        return dict(zip(ps, mean)).get(p, float("nan"))


def prefix_plot(curves: Curves, families: list[str], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, len(curves.titles), figsize=(4.2 * len(curves.titles), 7.5), sharey="row")
    colours = plt.get_cmap("tab20").colors
    for col, title in enumerate(curves.titles):
        for i, family in enumerate(families):
            style = "--" if family.endswith(("-ea2", "-freq")) else "-"
            for row, key in enumerate(("ord", "stab")):
                ps, mean, half = curves.stats(title, family, key)
                if not ps:
                    continue
                c = colours[(2 * i) % 20 + (2 * i) // 20]
                axes[row, col].plot(ps, mean, style, marker=".", color=c, label=LM.LABELS[family])
                axes[row, col].fill_between(ps, np.subtract(mean, half), np.add(mean, half), color=c, alpha=0.12)
        axes[0, col].set_title(title, fontsize=9)
        for row, key in enumerate(("Ord_p", "Stab_p")):
            axes[row, col].set_xscale("log", base=2)
            axes[row, col].set_ylim(
                -0.4 if row == 0 else 0.0, 1.02
            )  # wide intervals of few pairs must not hide the means
            axes[row, col].grid(alpha=0.3)
            axes[row, 0].set_ylabel(key)
        axes[1, col].set_xlabel("prefix length p")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def fvu_plot(curves: dict, path: Path) -> None:
    """Training FVU against tokens, mean over seeds, per family (source A)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for family, runs in curves.items():
        tokens = runs[0][0]
        n = min(len(r[1]) for r in runs)
        ax.plot(tokens[:n], np.mean([r[1][:n] for r in runs], axis=0), label=LM.LABELS[family])
    ax.set(xlabel="training tokens", ylabel="training FVU (mean over seeds)", yscale="log",
           title="Convergence on source A")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def lm_section(lm: dict, figs: Path) -> dict:
    curves = Curves(lm)
    families = list(lm["within"]["a"])
    prefix_plot(curves, families, figs / "lm_prefix_curves.png")
    fvu_plot(lm["curves"], figs / "lm_fvu_tokens.png")
    K, t = LM.LM_K, curves.titles
    table = [
        "| family | Ord_K within A | Ord_K within B | Ord_K across (other seed) | Ord_K across (same seed) | "
        "Ord_16 within A | Stab_16 within A | Stab_K within A | Stab_K across (other seed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "-" if np.isnan(v) else f"{v:.3f}"  # noqa: E731
    for f in families:
        cells = [(t[0], "ord", K), (t[1], "ord", K), (t[2], "ord", K), (t[3], "ord", K), (t[0], "ord", 16),
                 (t[0], "stab", 16), (t[0], "stab", K), (t[2], "stab", K)]  # fmt: skip
        table.append(f"| {LM.LABELS[f]} | " + " | ".join(fmt(curves(a, f, key, p)) for a, key, p in cells) + " |")
    recon = ["| family (source A) | FVU | L0 | dead |", "|---|---|---|---|"]
    for f in families:
        ms = list(lm["within"]["a"][f]["saes"].values())
        recon.append(
            f"| {LM.LABELS[f]} | {mean_std([m['fvu'] for m in ms])} | {np.mean([m['l0'] for m in ms]):.1f} | "
            f"{mean_std([m['dead_fraction'] for m in ms])} |"
        )
    return {
        "lm_table": "\n".join(table),
        "lm_recon": "\n".join(recon),
        "lm_verdicts": "\n".join(lm_verdicts(curves, t, K, LM.LABELS, families)),
        "seeds_a": lm["seeds"]["a"],
        "seeds_b": lm["seeds"]["b"],
        "train_tokens": lm["train_tokens"],
        "second_source": ", ".join(lm["second_source"]),
    }


def progressive_section(lm: dict, figs: Path) -> dict:
    d = lm["detail"]["saes"]
    grid = (16, 64, 256, LM.LM_K)
    rows = [
        "| SAE (seed 0, source A) | " + " | ".join(f"G={g}: FVU / CE" for g in grid) +
        " | E[z^2] power law, all ranks: exponent (R^2) | first 90% of ranks |",
        "|---|" + "---|" * (len(grid) + 2),
    ]  # fmt: skip
    for label, m in d.items():
        fv, ce = m.get("progressive_fvu", {}), m.get("progressive_ce") or {}
        cells = [f"{fv.get(str(g), float('nan')):.3f} / {ce.get(str(g), float('nan')):.3f}" for g in grid]
        top = m["power_law_top90"]
        rows.append(
            f"| {LM.LABELS[label]} | " + " | ".join(cells) + f" | {m['power_law_exponent']:.2f} "
            f"({m['power_law_r2']:.2f}) | {top['exponent']:.2f} ({top['r2']:.2f}) |"
        )
    progressive_plot({"saes": {LM.LABELS[k]: v for k, v in d.items()}}, figs)
    keep = ("topk", "topk-ea2", "osae", "matryoshka", "batchtopk-ea2")
    power_law_plot({LM.LABELS[k]: np.asarray(lm["detail"]["ea2"][k]) for k in keep}, figs)
    return {
        "prog_table": "\n".join(rows),
        "prog_verdicts": "\n".join(progressive_verdicts(d, G)),
        "ce_clean": d["topk"]["ce_loss_clean"],
    }


# -- stitching ------------------------------------------------------------------------------------
def stitch_section(st: dict) -> dict:
    rows = st["stitching"]

    def cell(small, large, key, margin=None):
        vals = [(r["margins"][margin]["novel"] if margin else r[key]) for r in rows
                if r["small"] == small and r["large"] == large]  # fmt: skip
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)

    pc = lambda mv: f"{100 * mv[0]:.1f}% ({100 * mv[1]:.1f})"  # noqa: E731
    table = [
        "| architecture | novel | reconstruction | no change | novel below index 256 | novel above | novel at 10% / "
        "20% / 50% margin | paper: novel |",
        "|---|---|---|---|---|---|---|---|",
    ]
    same = {}
    for a in ARCHS:
        table.append(
            f"| {a} | {pc(cell(a, a, 'novel_fraction'))} | {pc(cell(a, a, 'reconstruction_fraction'))} | "
            f"{pc(cell(a, a, 'no_change_fraction'))} | {pc(cell(a, a, 'novel_fraction_below_small'))} | "
            f"{pc(cell(a, a, 'novel_fraction_above_small'))} | "
            + " / ".join(f"{100 * cell(a, a, None, m)[0]:.1f}%" for m in ("0.1", "0.2", "0.5"))
            + f" | {100 * PAPER_NOVEL[a]:.1f}% |"
        )
        same[a] = {"novel": cell(a, a, "novel_fraction")[0], "novel_20": cell(a, a, None, "0.2")[0]}
    swap_means = {(s, g): cell(s, g, "novel_fraction")[0] for s in ARCHS for g in ARCHS}
    swap = ["| small \\ large | " + " | ".join(ARCHS) + " |", "|---|" + "---|" * len(ARCHS)]
    for small in ARCHS:
        swap.append(f"| {small} | " + " | ".join(pc(cell(small, large, "novel_fraction")) for large in ARCHS) + " |")
    fvu = st["fvu"]
    fvu_ok = {}
    for a in ARCHS:
        for s in range(st["seeds"]):
            small, large = fvu.get(f"{a}-K{st['small']}-k16-s{s}"), fvu.get(f"{a}-K{st['large']}-k16-s{s}")
            fvu_ok[f"{a} s{s} ({large:.3f} < {small:.3f})"] = large < small
    return {
        "stitch_table": "\n".join(table),
        "stitch_swap": "\n".join(swap),
        "stitch_verdicts": "\n".join(stitch_verdicts(same, fvu_ok, swap_means)),
        "stitch_seeds_last": st["seeds"] - 1,
        "stitch_tokens": st["tokens"],
    }


def hybrid_section(h: dict) -> dict:
    rows = [
        "| SAE | FVU | L0 | dead | CE recovered | KL | reorders | Spearman(index, frequency) | "
        "Spearman(index, E[z^2]) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in ("hybridorder", "no-reorder", "relu"):
        m = h["saes"][label]
        rows.append(
            f"| {label} | {m['fvu']:.4f} | {m['l0']:.1f} | {m['dead_fraction']:.3f} | {m['ce_loss_recovered']:.3f} | "
            f"{m['kl']:.4f} | {m['reorders']} | {m['index_frequency_spearman']:.3f} | "
            f"{m['index_importance_spearman']:.3f} |"
        )
    return {"ho_table": "\n".join(rows), "ho_verdicts": "\n".join(hybrid_verdicts(h))}


def write_results(results: dict, out: Path, docs: Path, machine: str) -> Path:
    figs = docs / "results"
    figs.mkdir(parents=True, exist_ok=True)
    if (out / "toy_matching.png").exists():
        (figs / "toy_matching.png").write_bytes((out / "toy_matching.png").read_bytes())
    seconds = json.loads((out / STAGES).read_text())
    fields = {
        "machine": machine,
        "timings": ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())
        + f"; in all {sum(seconds.values()) / 60:.1f} min",
        "lm_tokens": results["harvest"]["tokens"],
        **toy_section(results["toy"]),
        **lm_section(results["lm"], figs),
        **progressive_section(results["lm"], figs),
        **stitch_section(results["stitching"]),
        **hybrid_section(results["hybrid"]),
    }
    path = docs / "results.md"
    path.write_text(TEMPLATE.read_text().format(**fields))
    return path
