"""Choose osae's training recipe by measurement (issue 13). Results go to docs/fit.md.

Every candidate trains on the same store, with the same batches (shuffle seed, batch size, tokens), and is
scored by osae's reconstruction metrics on the store's held-out split (FVU in store units, L0, latents
never active there). A group is one `osae fit` run: its run-wide settings (schedule, optimizer, loss
scaling, dead window) and the SAEs it trains side by side on the same batches (learning rates, AuxK on or
off). Training FVU against tokens comes from each SAE's metrics.jsonl: in one pass every batch is scored
before the SAE has trained on it, so that curve is held out too.

    python benchmarks/recipe_sweep.py --store acts.zarr --tokens 1000000 --K 4096 --out /tmp/sweep \
        --groups adam-decay,adam-cosine --lrs 1e-3,2e-3,4e-3

Writes OUT/results.json, OUT/table.md and OUT/fvu_vs_tokens.png. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# Run-wide settings of each group (TrainConfig fields); what a group leaves out is osae fit's default.
ADAM = {"optimizer": "adam"}
GROUPS = {
    "adam-decay": ADAM,
    "adam-nodecay": {**ADAM, "lr_decay_frac": 0.0},
    "adam-cosine": {**ADAM, "lr_schedule": "cosine"},
    "adam-beta2-0.99": {**ADAM, "adam_betas": [0.9, 0.99]},
    "adam-fvu-loss": {**ADAM, "loss_scale": "fvu"},
    "adam-window-1M": {**ADAM, "dead_window_tokens": 1_000_000},
    "adam-lazy": {"optimizer": "adam-lazy"},
    "signum-sf": {"optimizer": "signum-sf"},
    "signum-sf-bf16": {"optimizer": "signum-sf", "autocast": "bf16"},
    "signum-sf-fvu-loss": {"optimizer": "signum-sf", "loss_scale": "fvu"},
    "signum-sf-nowarmup": {"optimizer": "signum-sf", "lr_warmup_steps": 0},
    "adam-bf16": {**ADAM, "autocast": "bf16"},
    "adam-sf": {"optimizer": "adam-sf"},
    "adam-decay100": {**ADAM, "lr_decay_frac": 1.0},
    "adam-warmup-60": {**ADAM, "lr_warmup_steps": 60},  # a quarter of a 1M-token run at batch 4096
    "adam-warmup-244": {**ADAM, "lr_warmup_steps": 244},  # a quarter of a 4M-token run at batch 4096
    "adam-warmup-100": {**ADAM, "lr_warmup_steps": 100},  # 41% of a 1M-token run at batch 4096
    "adam-warmup-122": {**ADAM, "lr_warmup_steps": 122},  # half of a 1M-token run at batch 4096
    "adam-window-10k": {**ADAM, "dead_window_tokens": 10_000},
    "adam-window-25k": {**ADAM, "dead_window_tokens": 25_000},
    "adam-window-50k": {**ADAM, "dead_window_tokens": 50_000},
    "adam-window-100k": {**ADAM, "dead_window_tokens": 100_000},  # a tenth of 1M tokens: the session 11 default
    "adam-window-250k": {**ADAM, "dead_window_tokens": 250_000},
    "adam-window-500k": {**ADAM, "dead_window_tokens": 500_000},
    # lazy Adam leaves a dead latent's moments alone, so a revived one takes no stale step: would windows
    # shorter than torch Adam's churn limit (session 12) pay now? At K = 16384 they did not (session 17)
    "lazy-window-25k": {"optimizer": "adam-lazy", "dead_window_tokens": 25_000},
    "lazy-window-50k": {"optimizer": "adam-lazy", "dead_window_tokens": 50_000},
    "lazy-window-200k": {"optimizer": "adam-lazy", "dead_window_tokens": 200_000},
    "lazy-warmup-171": {"optimizer": "adam-lazy", "lr_warmup_steps": 171},  # 70% of a 1M-token run at batch 4096
    # the default optimizer with the encoder matmul in fp32 and in bf16, whatever `auto` picks on this CPU
    "lazy-fp32": {"optimizer": "adam-lazy", "autocast": "none"},
    "lazy-bf16": {"optimizer": "adam-lazy", "autocast": "bf16"},
}


def _specs(arch: str, K: int, k: int, lrs: list[float | None], no_auxk: bool, variants: list[dict]) -> list:
    from osae.train.config import SAESpec

    if variants:  # every lr with every variant of the SAE settings, seeds 200, 201, ...
        return [
            SAESpec(arch, 200 + i, {"d_sae": K, "k": k, **v}, lr=lr)
            for i, (lr, v) in enumerate((lr, v) for v in variants for lr in lrs)
        ]
    # Run names differ by seed only, so each SAE of a group has its own (initialisation) seed; the batches
    # are the same. `--seed-check` measures what the seed alone moves.
    specs = [SAESpec(arch, i, {"d_sae": K, "k": k}, lr=lr) for i, lr in enumerate(lrs)]
    if no_auxk:
        specs += [SAESpec(arch, 100 + i, {"d_sae": K, "k": k, "aux_k_coef": 0.0}, lr=lr) for i, lr in enumerate(lrs)]
    return specs


def token_count(n: int) -> str:
    """A token count as labels show it: 25k, 1M."""
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def _score(store, hook: str, sae_dir: Path, max_tokens: int) -> dict:
    from osae.evaluate.batches import checkpoint_normalizer, encode_rows
    from osae.evaluate.reconstruction import Accumulator
    from osae.store import iter_rows
    from osae.train.checkpoint import load_frozen

    sae, cfg = load_frozen(sae_dir)
    normalizer = checkpoint_normalizer(cfg)
    acc = Accumulator(sae.cfg.d_sae, [])
    with torch.no_grad():
        for rows in iter_rows(store, hook, "eval", max_tokens=max_tokens):
            acc.add(encode_rows(sae, normalizer, rows))
    res = acc.result(store.d_model(hook))
    return {k: res[k] for k in ("n_tokens", "fvu", "l0", "dead_fraction")}


def _curve(sae_dir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(l) for l in (sae_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [(l["tokens"], l["fvu"]) for l in lines]


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        t, f = zip(*r["curve"])
        ax.plot(t, f, label=f"{r['group']} {r['label']} (held out {r['fvu']:.3f})", lw=1)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("FVU of each new batch, before training on it")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    from osae.store import ActivationStore
    from osae.train.config import SAESpec, TrainConfig
    from osae.train.fit import fit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--hook", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--arch", default="topk")
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--K", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--groups", default="adam-decay")
    ap.add_argument("--lrs", default="default", help="comma-separated; 'default' is osae's rule")
    ap.add_argument("--no-auxk", action="store_true", help="also train every lr with AuxK off")
    ap.add_argument("--variants", default="[]", help="JSON list of SAE settings, each trained at every lr")
    ap.add_argument("--seed-check", type=int, default=0, help="this many more seeds at the first lr")
    ap.add_argument("--eval-tokens", type=int, default=100_000)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--rescore", action="store_true", help="score the SAEs an earlier run of these arguments left")
    args = ap.parse_args()
    lrs = [None if v == "default" else float(v) for v in args.lrs.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = ActivationStore(args.store)
    hook = store.resolve_hook(args.hook)
    rows = []
    base = SAESpec(args.arch, 0, {"d_sae": args.K, "k": args.k}).config
    for group in args.groups.split(","):
        cfg = TrainConfig(
            store=args.store,
            out=str(out / group),
            hook=hook,
            saes=_specs(args.arch, args.K, args.k, lrs, args.no_auxk, json.loads(args.variants))
            + [SAESpec(args.arch, 50 + s, {"d_sae": args.K, "k": args.k}, lr=lrs[0]) for s in range(args.seed_check)],
            tokens=args.tokens,
            batch_size=args.batch,
            log_every=args.log_every,
            checkpoint_every=10**9,
            **GROUPS[group],
        )
        t0 = time.perf_counter()
        if not args.rescore:
            fit(cfg, overwrite=True, progress=False)
        wall = time.perf_counter() - t0
        for spec in cfg.saes:
            d = out / group / spec.name
            score = _score(store, hook, d, args.eval_tokens)
            changed = {
                k: (f"[{len(v)} values]" if isinstance(v, list) and len(v) > 8 else v)
                for k, v in spec.config.items()
                if k not in ("d_sae", "k", "aux_k_coef") and v != base.get(k)
            }
            # the resolved values, not differences from the defaults of the day: labels stay comparable
            # across sweeps run under different defaults
            coef = spec.arch_config.aux_k_coef
            label = (
                f"lr={cfg.lr_of(spec):.2g} warmup={cfg.warmup_steps} window={token_count(cfg.dead_window_of(spec))} "
                f"auxk={coef:g} s{spec.seed}" + "".join(f" {k}={v}" for k, v in changed.items())
            )
            rows.append({"group": group, "label": label, "lr": cfg.lr_of(spec), "auxk_coef": coef, **score,
                         "group_wall_s": wall, "curve": _curve(d)})  # fmt: skip
            print(f"{group:>18} {label:>22}  FVU {score['fvu']:.4f}  L0 {score['l0']:.1f}  "
                  f"dead {100 * score['dead_fraction']:.1f}%", flush=True)  # fmt: skip
    best = min(r["fvu"] for r in rows)
    table = ["| group | SAE | held-out FVU | vs best | L0 | dead |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["fvu"]):
        table.append(f"| {r['group']} | {r['label']} | {r['fvu']:.4f} | {r['fvu'] / best:.3f} | {r['l0']:.1f} "
                     f"| {100 * r['dead_fraction']:.1f}% |")  # fmt: skip
    meta = {"store": args.store, "hook": hook, "arch": args.arch, "tokens": args.tokens, "K": args.K, "k": args.k,
            "batch": args.batch, "eval_tokens": args.eval_tokens}  # fmt: skip
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "table.md").write_text("\n".join(table) + "\n")
    title = f"{args.arch} K={args.K} k={args.k}, {args.tokens:,} tokens, batch {args.batch}"
    _plot(rows, out / "fvu_vs_tokens.png", title)
    print("\n".join(table))


if __name__ == "__main__":
    main()
