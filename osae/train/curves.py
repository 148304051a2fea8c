"""training_curves.png: every SAE of a run, from its metrics.jsonl, against training tokens."""

from __future__ import annotations

import json
from pathlib import Path

from osae.plotting import pyplot, save_figure

# (metrics.jsonl key, axis label, log scale)
PANELS = (
    ("fvu", "training FVU (batch before its step)", True),
    ("l0", "L0 (active latents per token)", False),
    ("dead_fraction", "dead fraction (no firing in the window)", False),
    ("lr", "learning rate", False),
)
MAX_LEGEND = 12


def read_metrics(path: Path) -> list[dict]:
    """The lines of one metrics.jsonl (none if it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_training_curves(out: Path, sae_names: list[str], path: Path) -> Path | None:
    """Plot the SAEs `sae_names` of run directory `out` into `path`; None when none has logged yet."""
    runs = {name: read_metrics(out / name / "metrics.jsonl") for name in sae_names}
    runs = {name: lines for name, lines in runs.items() if lines}
    if not runs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, (key, label, log) in zip(axes.flat, PANELS):
        for name, lines in runs.items():
            points = [(m["tokens"], m[key]) for m in lines if m.get(key) is not None]
            if points:
                ax.plot(*zip(*points), label=name, linewidth=1.2)
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("training tokens")
    if len(runs) <= MAX_LEGEND:
        axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{out.name}: {len(runs)} SAE{'s' if len(runs) > 1 else ''}")
    fig.tight_layout()
    return save_figure(fig, path)
