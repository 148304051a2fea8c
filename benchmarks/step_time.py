"""Training-step time of every architecture (issue 13). Results go to docs/benchmarks.md.

One SAE (default d=512, K=16384, k=32, B=4096), float32 on CPU, the default optimizer, the full update
(forward, backward, radial projection, clipping, step, renormalisation) as the trainer runs it. Measured in one run,
architectures interleaved over rounds. References: every sparse architecture again with autograd's dense
encoder backward (its pre-activations as a plain graph, as before the sparse backward), with bfloat16
autocast, and for the ordered loss the sampled estimator and a naive per-prefix form that decodes the
k+1 distinct truncations of every token separately. `--profile` prints where a step's time goes.

    python benchmarks/step_time.py --rounds 2 --steps 2
    python benchmarks/step_time.py --d 256 --K 4096 --profile topk,matryoshka,osae
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from osae.store import Normalizer
from osae.train.architectures.codes import SparseCode
from osae.train.batches import TensorBatches
from osae.train.config import SAESpec, TrainConfig
from osae.train.trainer import Trainer

D, K, k, B = 512, 16384, 32, 4096  # set from the command line in main()


def naive_prefix_loss(sae, x, pi):
    """E_L of the truncated error by explicit truncations at each active latent (k+1 decodes)."""
    pre = sae.pre_acts(x)
    vals, idx = torch.topk(pre, k, dim=1)
    vals = vals.clamp_min(0)
    order = torch.argsort(idx, dim=1)
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    pi_ext = torch.cat([torch.ones(1), pi, torch.zeros(1)])
    total = 0
    r = x - sae.b_dec
    for t in range(k + 1):
        kept = vals * (torch.arange(k)[None, :] < t)
        recon = sae.decode(SparseCode(idx, kept), bias=False)
        lo = torch.zeros(len(x), dtype=torch.long) if t == 0 else idx[:, t - 1] + 1  # prefix lengths [i_t, i_{t+1})
        hi = idx[:, t] + 1 if t < k else torch.full((len(x),), K + 1)
        w = pi_ext[lo] - pi_ext[hi]  # P(i_t <= L < i_{t+1}) = pi_{i_t} - pi_{i_{t+1}}
        total = total + (w * ((r - recon) ** 2).sum(1)).mean()
    return total


def _trainer(spec: SAESpec, autocast: str = "none", optimizer: str | None = None) -> Trainer:
    cfg = TrainConfig(
        **({"optimizer": optimizer} if optimizer else {}),
        store="unused",
        out="/nonexistent",
        saes=[spec],
        tokens=B * 4000,
        batch_size=B,
        lr_warmup_steps=1,
        autocast=autocast,
    )
    return Trainer(
        cfg, TensorBatches(torch.zeros(B, D), B), d_in=D, normalizer=Normalizer("none"), meta={}, progress=False
    )


def _mark_dead(tr: Trainer, m, share: float) -> None:
    """Make the first `share` of the latents (in a fixed random order) dead for AuxK, as a run's are."""
    if share > 0:
        order = torch.randperm(len(m.since_fired), generator=torch.Generator().manual_seed(1))
        m.since_fired.zero_()
        m.since_fired[order[: round(share * len(order))]] = m.dead_window


def step_time(
    spec: SAESpec,
    steps: int,
    naive: bool = False,
    dense_backward: bool = False,
    autocast="none",
    dead: float = 0.0,
    optimizer: str | None = None,
) -> float:
    tr = _trainer(spec, autocast, optimizer)
    m = tr.members[0]
    if dense_backward:
        m.sae.train_pre_acts = m.sae.pre_acts  # a plain graph: autograd's dense B x K backward
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g)
    if naive:

        def forward(x, ctx=None):
            out = type(m.sae).forward(m.sae, x, ctx)
            out.losses["nd"] = naive_prefix_loss(m.sae, x, m.sae.pi)
            return out

        m.sae.forward = forward
    tr.step = 2000
    _mark_dead(tr, m, dead)
    tr._train_step(m, x)  # warm-up
    total = 0.0
    for _ in range(steps):
        _mark_dead(tr, m, dead)  # the step revives the dead latents that fired
        t0 = time.perf_counter()
        tr._train_step(m, x)
        total += time.perf_counter() - t0
    return total / steps


def end_to_end(arch: str, steps: int, root: str = "/tmp/osae-step-bench") -> float:
    """Training tokens/s of `osae fit` from a store (loader, trainer, checkpoint at the end included)."""
    import shutil
    from pathlib import Path

    from osae.store import StoreWriter, hook_spec
    from osae.train.fit import fit

    root = Path(root)
    store = root / "store.zarr"
    if not store.exists():
        w = StoreWriter.create(store, hooks={"h": hook_spec(0, D, "float16")}, has_tokens=False, overwrite=True)
        rng = np.random.default_rng(0)
        for _ in range(2):
            w.write({"h": rng.standard_normal((w.shard_rows, D)).astype(np.float16)})
        w.close()
    out = root / f"run-{arch}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(
        store=str(store),
        out=str(out),
        saes=[SAESpec(arch, 0, {"d_sae": K, "k": k})],
        tokens=B * steps,
        batch_size=B,
        buffer_bytes=2**28,
        checkpoint_every=10**9,
    )
    t0 = time.perf_counter()
    fit(cfg, progress=False)
    return B * steps / (time.perf_counter() - t0)


def profile(spec: SAESpec, steps: int, autocast: str = "none", dead: float = 0.0) -> str:
    """torch.profiler's table of one architecture's training steps, by self CPU time."""
    tr = _trainer(spec, autocast)
    m = tr.members[0]
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    tr.step = 2000
    _mark_dead(tr, m, dead)
    tr._train_step(m, x)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            _mark_dead(tr, m, dead)
            tr._train_step(m, x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14)


def main() -> None:
    global D, K, k, B
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--e2e-steps", type=int, default=6)
    ap.add_argument("--d", type=int, default=D)
    ap.add_argument("--K", type=int, default=K)
    ap.add_argument("--k", type=int, default=k)
    ap.add_argument("--B", type=int, default=B)
    ap.add_argument("--profile", default="", help="comma-separated architectures to profile instead of timing")
    ap.add_argument("--only", default="", help="case names separated by ; (default: all); topk is always timed")
    ap.add_argument("--dead", type=float, default=0.0, help="share of latents dead before every step (AuxK runs)")
    ap.add_argument("--profile-autocast", default="none", choices=("none", "bf16"), help="autocast of --profile")
    args = ap.parse_args()
    D, K, k, B = args.d, args.K, args.k, args.B
    base = {"d_sae": K, "k": k}
    if args.profile:
        for arch in args.profile.split(","):
            table = profile(SAESpec(arch, 0, base), args.steps, args.profile_autocast, args.dead)
            print(f"== {arch} (d={D}, K={K}, k={k}, B={B}, dead {args.dead:.0%}, {args.profile_autocast})\n{table}")
        return
    sparse = ("topk", "batchtopk", "matryoshka", "matryoshka-random", "osae")
    cases = {
        "topk": (SAESpec("topk", 0, base), {}),
        "osae (exact, all prefixes)": (SAESpec("osae", 0, base), {}),
        "osae (sampled prefix)": (SAESpec("osae", 0, {**base, "estimator": "sample"}), {}),
        "osae (naive per-prefix decodes)": (SAESpec("osae", 0, base), {"naive": True}),
        "batchtopk": (SAESpec("batchtopk", 0, base), {}),
        "matryoshka": (SAESpec("matryoshka", 0, base), {}),
        "matryoshka-random": (SAESpec("matryoshka-random", 0, base), {}),
        "relu": (SAESpec("relu", 0, base), {}),
        "hybridorder": (SAESpec("hybridorder", 0, base), {}),
        **{f"{a} (dense backward)": (SAESpec(a, 0, base), {"dense_backward": True}) for a in sparse},
        **{f"{a} (bf16 autocast)": (SAESpec(a, 0, base), {"autocast": "bf16"}) for a in sparse},
        **{f"{a} (torch adam)": (SAESpec(a, 0, base), {"optimizer": "adam"}) for a in ("topk", "osae")},
    }
    if args.only:
        keep = {"topk", *args.only.split(";")}
        unknown = keep - set(cases)
        if unknown:
            raise SystemExit(f"--only: unknown cases {sorted(unknown)}; choose from {sorted(cases)}")
        cases = {n: c for n, c in cases.items() if n in keep}
    times = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (spec, options) in cases.items():
            times[name].append(step_time(spec, args.steps, dead=args.dead, **options))
    res = {
        "shape": {"d": D, "K": K, "k": k, "B": B},
        "dead_share": args.dead,
        "torch_threads": torch.get_num_threads(),
        "seconds_per_step": {n: float(np.mean(t)) for n, t in times.items()},
    }
    ref = res["seconds_per_step"]["topk"]
    res["ratio_to_topk"] = {n: t / ref for n, t in res["seconds_per_step"].items()}
    if args.e2e_steps:
        res["end_to_end_tokens_per_s"] = {a: end_to_end(a, args.e2e_steps) for a in ("topk", "osae")}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
