"""Store and loader benchmarks (issue: activation store). Results go to docs/benchmarks.md.

Measured side by side in one run on one store of 2^21 x 512 float16 rows (2 GiB), packed sequences of
127 rows (context 128, BOS excluded), default layout (16384-row chunks, 8 chunks a shard, crc32c):
1. write throughput;
2. a plain sequential full read, chunk by chunk, against one shuffled epoch of the loader;
3. shuffle quality: distinct sequences per batch against an ideal uniform permutation of the same rows;
4. a TopK SAE training loop (d=512, K=16384, k=32, B=4096) and the share of its wall time spent waiting
   for the loader.

    python benchmarks/store_loader.py --out /tmp/bench [--rows 2097152] [--train-steps 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from big_store import build_store as write_synthetic_store  # benchmarks/ is on the path when run as a script

from osae.store import ActivationStore, LoaderConfig, ShuffledLoader, split_intervals

HOOK = "blocks.3.hook_resid_post"
CTX = 128


def build_store(path: Path, rows: int, d: int) -> float:
    """Write the synthetic store; its write rate in GB/s."""
    return write_synthetic_store(path, rows, d)["write_gb_s"]


def sequential_read(store: ActivationStore) -> float:
    t0 = time.perf_counter()
    for c in range(store.n_chunks):
        store.read_chunk(f"acts/{HOOK}", c)
    return store.n_tokens * store.d_model(HOOK) * 2 / (time.perf_counter() - t0) / 1e9


def loader_epochs(store: ActivationStore, dtype: str, buffer_bytes: int, epochs: int = 2) -> list[float]:
    """GB/s (of stored bytes delivered) of consecutive epochs of one loader; the first includes allocating
    and first touching the buffers."""
    ld = ShuffledLoader(store, HOOK, LoaderConfig(batch_size=4096, buffer_bytes=buffer_bytes, dtype=dtype))
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = sum(len(x) for x in ld.epoch_batches())
        rates.append(n * store.d_model(HOOK) * 2 / (time.perf_counter() - t0) / 1e9)
    return rates


def shuffle_quality(store: ActivationStore, buffer_bytes: int, max_batches: int = 300) -> dict:
    seq_of_row = lambda r: r // (CTX - 1)
    ld = ShuffledLoader(store, HOOK, LoaderConfig(batch_size=4096, buffer_bytes=buffer_bytes), with_rows=True)
    got = []
    for i, (_, rows) in enumerate(ld.epoch_batches()):
        got.append(len(np.unique(seq_of_row(rows))))
        if i + 1 >= max_batches:
            break
    iv = split_intervals(store, "train")
    all_rows = np.concatenate([np.arange(lo, hi) for lo, hi in zip(iv.lo, iv.hi)])
    perm = np.random.default_rng(0).permutation(all_rows)
    ideal = [len(np.unique(seq_of_row(perm[i : i + 4096]))) for i in range(0, 4096 * len(got), 4096)]
    return {
        "buffer_MiB": buffer_bytes / 2**20,
        "distinct_per_batch": float(np.mean(got)),
        "ideal_uniform": float(np.mean(ideal)),
        "ratio": float(np.mean(got) / np.mean(ideal)),
        "buffer_rows": ld.n_slots,
    }


def topk_training(store: ActivationStore, steps: int, K: int = 16384, k: int = 32) -> dict:
    """A TopK SAE step with a sparse (embedding-bag) decoder, timed, with the time blocked on the loader."""
    torch.manual_seed(0)
    d = store.d_model(HOOK)
    W_dec = torch.nn.Parameter(F.normalize(torch.randn(K, d), dim=1))
    W_enc = torch.nn.Parameter(W_dec.detach().clone())
    b_enc = torch.nn.Parameter(torch.zeros(K))
    b_dec = torch.nn.Parameter(torch.zeros(d))
    opt = torch.optim.Adam([W_dec, W_enc, b_enc, b_dec], lr=1e-4)
    ld = ShuffledLoader(store, HOOK, LoaderConfig(batch_size=4096))
    it = iter(ld)
    x = next(it)  # fill the pipeline before timing
    waited = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        x = next(it)
        waited += time.perf_counter() - t
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pre = F.linear(x - b_dec, W_enc, b_enc)
        vals, idx = torch.topk(pre.float().relu(), k, dim=1)
        recon = F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum") + b_dec
        loss = (recon - x).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    wall = time.perf_counter() - t0
    return {
        "steps": steps,
        "wall_s": wall,
        "tokens_per_s": steps * 4096 / wall,
        "wait_s": waited,
        "wait_fraction": waited / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/osae-bench"))
    ap.add_argument("--rows", type=int, default=2**21)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--train-steps", type=int, default=8)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench.zarr"
    res: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }
    res["write_GBps"] = build_store(path, args.rows, args.d)
    store = ActivationStore(path)
    res["store_GiB"] = store.n_tokens * args.d * 2 / 2**30
    seqs, fp32, f16 = [], [], []
    for _ in range(2):  # interleaved, so that drift of the shared machine hits both sides
        seqs.append(sequential_read(store))
        fp32.append(loader_epochs(store, "float32", 2**30, epochs=3))
        f16.append(loader_epochs(store, "store", 2**30, epochs=3))
    seq = float(np.mean(seqs))
    res["sequential_read_GBps"] = seqs
    res["loader_float32_GBps_by_epoch"], res["loader_float16_GBps_by_epoch"] = fp32, f16
    steady = lambda runs: float(np.mean([r for run in runs for r in run[1:]]))
    first = lambda runs: float(np.mean([run[0] for run in runs]))
    res["loader_vs_sequential"] = {
        "float32_steady": steady(fp32) / seq,
        "float16_steady": steady(f16) / seq,
        "float32_first_epoch": first(fp32) / seq,
        "float16_first_epoch": first(f16) / seq,
    }
    res["shuffle_quality"] = [shuffle_quality(store, b) for b in (2**28, 2**29, 2**30, 2**31)]
    res["training"] = topk_training(store, args.train_steps)
    print(json.dumps(res, indent=2))
    (args.out / "store_loader.json").write_text(json.dumps(res, indent=2))
    shutil.rmtree(path)


if __name__ == "__main__":
    main()
