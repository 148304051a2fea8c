"""Gather recipe_sweep.py results into one table, one plot per setting, and the verdict of each setting.

A setting is (store, hook, tokens, K). Within one optimizer family (a sweep group) the learning rate trades
held-out FVU against dead latents: a higher rate reconstructs better and kills more of the dictionary. So
families are compared at equal dead fractions: each point of family A is held against family B's FVU
interpolated (piecewise linearly, over B's learning rates) at A's dead fraction, where A leaves at most
COMPARE_DEAD of its latents dead. A beats B at a setting when every such comparison favours A. The
verdict names the family that beats every other where they overlap.

    python benchmarks/recipe_report.py /tmp/sweep1 /tmp/sweep3 ... --out docs/results/recipe
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from recipe_sweep import token_count  # run as a script from benchmarks/, beside recipe_sweep.py

MAX_DEAD = 0.05  # the table marks, per setting, the best FVU among candidates with at most this much dead
COMPARE_DEAD = 0.10  # families are compared where dictionaries are usable: at most a tenth of them dead


def _interpolate(points: list[tuple[float, float]], dead: float) -> float | None:
    """FVU of a family at `dead`, piecewise linear over its (dead, fvu) points; None outside their range."""
    points = sorted(points)
    for (d0, f0), (d1, f1) in zip(points, points[1:]):
        if d0 <= dead <= d1:
            return f0 if d1 == d0 else f0 + (f1 - f0) * (dead - d0) / (d1 - d0)
    return None


def _matched(rows: list[dict]) -> tuple[list[str], dict[tuple[str, str], bool]]:
    """Lines comparing every family's points with every other family's curve, and (A, B) -> A beats B."""
    families = defaultdict(list)  # a family: one recipe but for its learning rate
    for r in rows:
        families[" ".join(w for w in r["recipe"].split() if not w.startswith("lr="))].append(r)
    lines, beats = [], {}
    for a, a_rows in families.items():
        for b, b_rows in families.items():
            if a == b or len(b_rows) < 2:
                continue
            curve = [(r["dead_fraction"], r["fvu"]) for r in b_rows]
            ratios = []
            for r in a_rows:
                ref = _interpolate(curve, r["dead_fraction"]) if r["dead_fraction"] <= COMPARE_DEAD else None
                if ref is not None:
                    ratios.append(r["fvu"] / ref)
                    lines.append(
                        f"{r['recipe']} ({100 * r['dead_fraction']:.1f}% dead): FVU {r['fvu']:.4f} against {b}'s "
                        f"{ref:.4f} at that dead fraction ({r['fvu'] / ref:.2f}x)"
                    )
            if ratios:
                beats[(a, b)] = all(x < 1 for x in ratios)
    return lines, beats


def _with_window(row: dict, sweep: Path) -> dict:
    """Labels from before recipe_sweep named the dead window get it from the group's run.json (the resolved
    value), so a group run under another default reads as what it was."""
    if " window=" in row["label"]:
        return row
    resolved = json.loads((sweep / row["group"] / "run.json").read_text())["resolved"]
    window = token_count(resolved["dead_window_tokens"])  # one window per run then
    lr, _, rest = row["label"].partition(" auxk=")
    return {**row, "label": f"{lr} window={window} auxk={rest}"}


def _recipe(row: dict) -> str:
    """A candidate's recipe without its seed: group (run-wide settings) and SAE label (lr, AuxK, ...)."""
    label = " ".join(w for w in row["label"].split() if not (w.startswith("s") and w[1:].isdigit()))
    return f"{row['group']} {label}"


def _setting(meta: dict) -> str:
    store = Path(meta["store"]).name
    return f"{meta['arch']}, {store} {meta['hook']}, {meta['tokens'] / 1e6:g}M tokens, K={meta['K']}"


NEAR_BEST = 1.01  # a recipe "matches" a setting's best when its FVU is at most 1% above it, dead share allowed


def _near_best(by_setting: dict, max_dead: float) -> str:
    """The recipes that, in every setting where any candidate kept at most `max_dead` dead, keep that few
    and come within NEAR_BEST of the best FVU among those candidates. Recipes are matched by group and label,
    so a sweep's settings should share them."""
    good: dict[str, int] = defaultdict(int)
    scored = 0  # settings where some candidate kept at most max_dead dead
    for rows in by_setting.values():
        alive = [r for r in rows if r["dead_fraction"] <= max_dead]
        if not alive:
            continue
        scored += 1
        best = min(r["fvu"] for r in alive)
        for recipe in {r["recipe"] for r in alive if r["fvu"] <= NEAR_BEST * best}:
            good[recipe] += 1
    everywhere = sorted(r for r, n in good.items() if n == scored)
    return (
        f"Within {100 * (NEAR_BEST - 1):g}% of the best FVU with at most {100 * max_dead:g}% dead in every one of "
        f"the {scored} settings where a candidate kept that few dead ({len(by_setting) - scored} had none): "
        f"{'; '.join(everywhere) if everywhere else 'no recipe'}."
    )


def _paired(by_setting: dict, pair: str) -> list[str]:
    """Group A against group B ("A,B") where their SAEs differ in nothing else (same label: learning rate,
    warm-up, window, AuxK, seed, so the same initialisation and batches): each pair's FVU ratio and dead
    fractions, then the range over all pairs."""
    a, b = pair.split(",")
    lines, ratios, fewer_dead = [f"{a} against {b}, SAE for SAE:"], [], 0
    for setting, rows in by_setting.items():
        of_b = {r["label"]: r for r in rows if r["group"] == b}
        for r in (r for r in rows if r["group"] == a and r["label"] in of_b):
            o = of_b[r["label"]]
            ratios.append(r["fvu"] / o["fvu"])
            fewer_dead += r["dead_fraction"] < o["dead_fraction"]
            lines.append(
                f"- {setting}, {r['label']}: FVU {r['fvu']:.4f} against {o['fvu']:.4f} ({ratios[-1]:.3f}x), dead "
                f"{100 * r['dead_fraction']:.1f}% against {100 * o['dead_fraction']:.1f}%"
            )
    if not ratios:
        return [*lines, "- no pairs"]
    return [
        *lines,
        f"Over {len(ratios)} pairs: FVU ratio {min(ratios):.3f}-{max(ratios):.3f}; {a} has fewer dead latents in "
        f"{fewer_dead} of {len(ratios)}.",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", help="recipe_sweep.py output directories")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--min-eval-tokens", type=int, default=1_000_000, help="leave out sweeps scored on fewer held-out rows"
    )
    ap.add_argument("--max-dead", type=float, default=MAX_DEAD, help="dead share under which the table marks the best")
    ap.add_argument("--pair", default="", help="A,B: compare group A's SAEs with group B's identical ones")
    args = ap.parse_args()
    missing = [d for d in args.sweeps if not (Path(d) / "results.json").is_file()]
    if missing:
        raise SystemExit(f"recipe_report: not a recipe_sweep.py output (no results.json): {', '.join(missing)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for d in args.sweeps:
        res = json.loads((Path(d) / "results.json").read_text())
        if res["meta"].get("eval_tokens", 0) < args.min_eval_tokens:
            continue  # scored on a subset of the held-out rows: not comparable with the others
        for row in res["rows"]:
            row = _with_window(row, Path(d))
            by_setting[_setting(res["meta"])].append({**row, "recipe": _recipe(row), "meta": res["meta"]})
    if not by_setting:
        raise SystemExit(f"no sweep was scored on at least {args.min_eval_tokens} held-out rows; see --min-eval-tokens")
    lines = [
        f"| setting | recipe | held-out FVU | dead | L0 | best with at most {100 * args.max_dead:g}% dead |",
        "|---|---|---|---|---|---|",
    ]
    winners, comparisons, bests = {}, [], []
    for setting, rows in by_setting.items():
        alive = [r for r in rows if r["dead_fraction"] <= args.max_dead]
        best = min(alive, key=lambda r: r["fvu"]) if alive else None
        bests.append(f"- {setting}: {best['recipe'] if best else 'none'}")
        for r in sorted(rows, key=lambda r: r["fvu"]):
            mark = "**yes**" if r is best else ""
            lines.append(
                f"| {setting} | {r['recipe']} | {r['fvu']:.4f} | {100 * r['dead_fraction']:.1f}% | {r['l0']:.1f} "
                f"| {mark} |"
            )
        matched, beats = _matched(rows)
        comparisons += [f"- {setting}: {m}" for m in matched]
        curves = {b for _, b in beats}  # families with a learning-rate curve that others were held against
        top = [g for g in curves if all(beats.get((g, o), False) for o in curves - {g})
               and not any(beats.get((o, g), False) for o in curves - {g})]  # fmt: skip
        winners[setting] = top[0] if len(top) == 1 else None
    found = set(winners.values())
    verdict = (
        f"{found.pop()} beats every other family at equal dead fractions in every setting"
        if len(found) == 1 and None not in found
        else f"no family wins every setting: {winners}"
    )
    lines += [
        "",
        f"Best FVU with at most {100 * args.max_dead:g}% dead:",
        *bests,
        "",
        _near_best(by_setting, args.max_dead),
    ]
    lines += ["", "At equal dead fractions:", *comparisons, "", f"Verdict: {verdict}."]
    if args.pair:
        lines += ["", *_paired(by_setting, args.pair)]
    (out / "recipe.md").write_text("\n".join(lines) + "\n")
    (out / "recipe.json").write_text(json.dumps({"winners": winners, "verdict": verdict}, indent=1))
    _plot(by_setting, out)
    print("\n".join(lines))


def _plot(by_setting: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(by_setting)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.5), squeeze=False)
    for ax, (setting, rows) in zip(axes[0], by_setting.items()):
        for r in sorted(rows, key=lambda r: r["fvu"]):
            t, f = zip(*r["curve"])
            ax.plot(t, f, lw=1, label=f"{r['recipe']}: {r['fvu']:.3f}, {100 * r['dead_fraction']:.0f}% dead")
        ax.set_xlabel("training tokens")
        ax.set_ylabel("FVU of each new batch (before training on it)")
        ax.set_yscale("log")
        ax.set_title(setting, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(out / "fvu_vs_tokens.png", dpi=120)


if __name__ == "__main__":
    main()
