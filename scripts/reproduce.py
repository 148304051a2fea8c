"""Reproduce the papers' experiments at CPU scale, with the controls a reviewer asks for, and write
docs/results.md with its plots.

    bash scripts/reproduce.sh            # = python scripts/reproduce.py after the usual set-up
    bash scripts/reproduce.sh --quick    # every stage at a tiny size (minutes): checks the pipeline only

Stages (scripts/reproduction/): the Gaussian toy (learning rate per family from a grid, seeds, sorted
controls, scored on a test set); the harvest of two text sources with the embedded model; OSAE against fixed
and random Matryoshka (per-token and BatchTopK), random Matryoshka with the EMA re-sort, BatchTopK, TopK and
the sorted controls, within and across sources; stitching 256 -> 4096 over seeds; HybridOrder against its
no-reorder and ReLU-L1 controls. Each stage is cached under --out with its wall time, and its fits resume,
so an interrupted run continues where it stopped; delete a stage's JSON to redo its analysis.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from reproduction.common import Stages  # noqa: E402
from reproduction.hybrid import run_hybrid  # noqa: E402
from reproduction.lm import harvest_sources, run_lm  # noqa: E402
from reproduction.report import write_results  # noqa: E402
from reproduction.stitch import run_stitching  # noqa: E402
from reproduction.toy import ToyPlan, run_toy  # noqa: E402

QUICK = {"toy_epochs": 2, "toy_seeds": 2, "toy_lrs": "1e-3,3e-3", "seeds": 2, "train_tokens": 65_536,
         "stitch_seeds": 2, "lm_tokens": 8_192, "seeds_b": 2, "stitch_tokens": 65_536}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        help="Working directory: stores, runs, cached results (out/reproduce, or with --quick out/reproduce-quick).",
    )
    ap.add_argument("--docs", help="Where results.md and results/*.png go (default: docs; with --quick: OUT/docs).")
    ap.add_argument("--toy-epochs", type=int, default=20)
    ap.add_argument("--toy-seeds", type=int, default=5)
    ap.add_argument("--toy-lrs", default="1e-4,3e-4,1e-3,3e-3", help="The toy's learning-rate grid.")
    ap.add_argument("--seeds", type=int, default=5, help="Seeds per family on source A (language model).")
    ap.add_argument("--seeds-b", type=int, default=3, help="Seeds per family on source B.")
    ap.add_argument("--train-tokens", type=int, default=2_000_000, help="Training tokens per SAE.")
    ap.add_argument("--stitch-seeds", type=int, default=3)
    ap.add_argument("--stitch-tokens", type=int, default=1_000_000, help="Training tokens per stitching SAE.")
    ap.add_argument("--lm-tokens", type=int, default=20_000, help="Tokens of the CE / KL passes.")
    ap.add_argument("--quick", action="store_true", help="Tiny sizes for a pipeline check (not results).")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    args = ap.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or ("out/reproduce-quick" if args.quick else "out/reproduce"))
    out.mkdir(parents=True, exist_ok=True)
    docs = Path(args.docs or (out / "docs" if args.quick else "docs"))  # a quick check never overwrites docs/
    stages = Stages(out)
    plan = ToyPlan(args.toy_epochs, args.toy_seeds, tuple(float(x) for x in args.toy_lrs.split(",")))
    tokens = int(args.train_tokens / 0.95) + 4096  # the training split holds the whole budget once
    results = {
        "toy": stages.run("toy", lambda: run_toy(out, plan)),
        "harvest": stages.run(
            "harvest",
            lambda: {"tokens": tokens, "stores": {k: str(v) for k, v in harvest_sources(out, tokens).items()}},
        ),
    }
    stores = {k: Path(v) for k, v in results["harvest"]["stores"].items()}
    results["lm"] = stages.run(
        "lm", lambda: run_lm(out, stores, {"a": args.seeds, "b": args.seeds_b}, args.train_tokens, args.lm_tokens)
    )
    results["stitching"] = stages.run(
        "stitching", lambda: run_stitching(out, stores["a"], args.stitch_seeds, args.stitch_tokens)
    )
    results["hybrid"] = stages.run("hybrid", lambda: run_hybrid(out, stores["a"], args.train_tokens, 4096))
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    path = write_results(results, out, docs, machine)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
