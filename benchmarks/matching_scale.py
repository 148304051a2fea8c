"""Stab/Ord of one pair of large dictionaries (issue: osae evaluate). Results go to docs/benchmarks.md.

Two K x d dictionaries that share structure the way two seeds do: the second is a permutation of the first
plus Gaussian noise (cosines of matched atoms around 0.6-0.9), and a share of atoms replaced by new ones.
Times `match` (sparse top-candidate matching above K = 4096) and the process's peak memory.

    python benchmarks/matching_scale.py --K 16384 --d 512
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from osae.evaluate.consistency import match


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--K", type=int, default=16384)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--noise", type=float, default=0.04)
    ap.add_argument("--new", type=float, default=0.3, help="share of atoms of the second dictionary that are new")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    A = rng.standard_normal((args.K, args.d)).astype(np.float32)
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    B = A[rng.permutation(args.K)] + args.noise * rng.standard_normal((args.K, args.d)).astype(np.float32)
    fresh = rng.random(args.K) < args.new
    B[fresh] = rng.standard_normal((int(fresh.sum()), args.d))
    t0 = time.perf_counter()
    m = match(A, B)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(
        json.dumps(
            {
                "K": args.K,
                "d": args.d,
                "method": m.method,
                "seconds": wall,
                "peak_rss_GiB": peak,
                "stab": m.stab,
                "ord": m.ord,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
