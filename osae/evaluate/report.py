"""Plots (PNG) and a Markdown report of an `evaluate` result: the figures people look at first."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from osae.plotting import pyplot as _plt
from osae.plotting import save_figure as _save


def _configuration_label(name: str) -> str:
    """The legend entry of a checkpoint's curves: its name without the seed suffix, so the seed pairs of one
    configuration draw one line (mean and CI)."""
    return re.sub(r"-s\d+$", "", name)


def _ci95(values: list[float]) -> float:
    """Half-width of a t-interval over pairs (normal approximation above 30 pairs)."""
    n = len(values)
    if n < 2:
        return 0.0
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def prefix_plot(result: dict, out: Path) -> Path | None:
    """Prefix-wise Ord and Stab against prefix length, mean and 95% CI over the seed pairs of each family."""
    by_family = defaultdict(list)
    for p in result["pairs"]:
        by_family[_configuration_label(p["a"])].append(p["prefix"])
    if not by_family:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for fam, curves in sorted(by_family.items()):
        ps = sorted({int(k) for c in curves for k in c})
        for ax, key in zip(axes, ("ord", "stab")):
            vals = [[c[str(p)][key] if str(p) in c else c[p][key] for c in curves] for p in ps]
            mean = [float(np.nanmean(v)) for v in vals]
            half = [_ci95([x for x in v if x == x]) for v in vals]
            ax.plot(ps, mean, marker="o", label=f"{fam} ({len(curves)} pairs)")
            ax.fill_between(ps, np.subtract(mean, half), np.add(mean, half), alpha=0.2)
    for ax, title in zip(axes, ("Orderedness of the first p atoms", "Stability of the first p atoms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prefix length p")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out / "prefix_curves.png")


def progressive_plot(result: dict, out: Path) -> Path | None:
    """FVU and (when the model ran) CE loss of the first G latents against G, one line per SAE."""
    panels = {"progressive_fvu": "FVU", "progressive_ce": "CE loss (nats/token)"}
    series = {key: {} for key in panels}
    for name, m in result["saes"].items():
        for key in panels:
            prog = {int(g): v for g, v in (m.get(key) or {}).items() if v is not None}
            if prog:
                gs = sorted(prog)
                series[key][name] = (gs, [prog[g] for g in gs])
    used = [k for k in panels if series[k]]
    if not used:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(used), figsize=(6 * len(used), 4), squeeze=False)
    for ax, key in zip(axes[0], used):
        for name, (x, y) in sorted(series[key].items()):
            ax.plot(x, y, marker=".", label=name)
        if key == "progressive_ce":
            clean = [m["ce_loss_clean"] for m in result["saes"].values() if m.get("ce_loss_clean") is not None]
            if clean:
                ax.axhline(clean[0], color="black", linestyle="--", linewidth=1, label="clean model")
        ax.set_xscale("log", base=2)
        ax.set(
            xlabel="latents kept (first G)",
            ylabel=panels[key],
            title=f"Progressive coding: {panels[key].split(' ')[0]}",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / "progressive.png")


def power_law_plot(ea2: dict[str, np.ndarray], out: Path) -> Path | None:
    """E[z^2] against rank, log-log, one line per SAE (dead latents left out)."""
    if not ea2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, v in sorted(ea2.items()):
        v = np.sort(np.asarray(v))[::-1]
        v = v[v > 0]
        ax.plot(np.arange(1, len(v) + 1), v, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="rank", ylabel="E[z^2]", title="Feature importance against rank")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / "power_law.png")


def matching_scatter(pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], out: Path) -> Path | None:
    """Where each atom of one dictionary finds its match in the other (the OSAE paper's Figure 1)."""
    if not pairs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs) + 1, 4), squeeze=False, layout="constrained")
    for i, (ax, (title, (rows, cols, cos))) in enumerate(zip(axes[0], sorted(pairs.items()))):
        sc = ax.scatter(rows, cols, c=cos, s=4, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{title}: first seed pair", fontsize=8)
        ax.set_xlabel("atom index, first SAE")
        if i == 0:
            ax.set_ylabel("matched index, second SAE")
    fig.colorbar(sc, ax=axes[0].tolist(), label="matched cosine")
    return _save(fig, out / "matching.png")


def dead_floor_note(n_tokens: int) -> str:
    """What "dead" can and cannot tell on n held-out tokens. A latent that fires once per n tokens is absent
    from such a sample with probability e^-1: nested SAEs push their rare latents to the tail of the order,
    so their held-out dead fraction counts rare latents too (docs/fit.md, session 18)."""
    return (
        f"\nDead: never active on the {n_tokens:,} held-out tokens scored. A latent that fires once in "
        f"{n_tokens:,} tokens is missed 37% of the time, so rare latents count as dead here; more held-out "
        "rows (a larger harvest, `--max-tokens`) lower that floor.\n"
    )


def write_report(result: dict, out: Path, figures: list[Path]) -> Path:
    lines = [
        "# SAE evaluation\n",
        f"Store: `{result['store']}`\n",
        "## Per SAE\n",
        "| SAE | FVU | cosine | L0 | dead | CE recovered | KL | power-law exponent (R^2) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, p=3: "n/a" if v is None else f"{v:.{p}f}"
    for name, m in sorted(result["saes"].items()):
        lines.append(
            f"| {name} | {fmt(m['fvu'])} | {fmt(m['cosine'])} | {fmt(m['l0'], 1)} | {fmt(m['dead_fraction'])} | "
            f"{fmt(m.get('ce_loss_recovered'))} | {fmt(m.get('kl'))} | {fmt(m.get('power_law_exponent'), 2)} "
            f"({fmt(m.get('power_law_r2'), 2)}) |"
        )
    if result["saes"]:
        lines.append(dead_floor_note(min(m["n_tokens"] for m in result["saes"].values())))
    if result["pairs"]:
        lines += ["\n## Seed pairs\n", "| pair | Stab | Ord | Stab_Z | Ord_Z |", "|---|---|---|---|---|"]
        for p in result["pairs"]:
            lines.append(
                f"| {p['a']} / {p['b']} | {fmt(p['stab'])} | {fmt(p['ord'])} | "
                f"{fmt(p.get('stab_z'))} | {fmt(p.get('ord_z'))} |"
            )
    if result.get("stitching"):
        lines += ["\n## Stitching\n", "| small -> large | novel | reconstruction | no change |", "|---|---|---|---|"]
        for s in result["stitching"]:
            lines.append(
                f"| {s['small']} -> {s['large']} | {fmt(s['novel_fraction'])} | {fmt(s['reconstruction_fraction'])} | "
                f"{fmt(s['no_change_fraction'])} |"
            )
    lines.append("")
    for f in figures:
        lines.append(f"![{f.stem}]({f.name})\n")
    if result["notes"]:
        lines += ["## Notes\n"] + [f"- {k}: {v}" for k, v in result["notes"].items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
