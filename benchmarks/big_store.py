"""A store larger than this machine's memory, read cold: the loader against a plain sequential read.

Issue #12's measurement. One run:
1. writes a store of `--gib` GiB of float16 rows (d=1024, packed 127-row sequences, the default layout);
2. drops the store's pages from the page cache (fsync, then posix_fadvise DONTNEED on every file: the page
   cache cannot be dropped as a whole without root, and a store larger than RAM cannot stay cached anyway);
3. reads every activation shard file in order with `dd bs=64M` (the sequential ceiling of this disk);
4. drops the pages again and, in a fresh child process per buffer size, runs one loader epoch of the train
   split (steps 3 and 4 alternate, one dd before each loader run, since the disk's rate drifts): time to
   the first batch, steady-state rate (stored bytes per second after the first batch), and
   the child's peak resident memory against its buffer.

    python benchmarks/big_store.py --dir /work/bigstore --gib 32 --runs 1:0,1:2,8:0 --out /tmp/big.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HOOK = "blocks.3.hook_resid_post"
CTX = 128
D = 1024
ROW_BYTES = D * 2


def build_store(path: Path, rows: int, d: int = D) -> dict:
    """Synthetic float16 rows (uncompressed, so their content does not matter) in packed 127-row sequences."""
    from osae.store import StoreWriter, hook_spec

    rng = np.random.default_rng(0)
    w = StoreWriter.create(
        path, hooks={HOOK: hook_spec(3, d, "float16", "resid_post")}, has_tokens=True, context_size=None, overwrite=True
    )
    per = CTX - 1
    n_seq = rows // per
    rows = n_seq * per
    block = w.shard_rows
    pool = rng.standard_normal((block + 4096, d)).astype(np.float16)
    t0 = time.perf_counter()
    w.add_sequences(np.arange(n_seq, dtype=np.int64) * per, None)
    for lo in range(0, rows, block):
        hi = min(lo + block, rows)
        shift = int(rng.integers(0, 4096))
        idx = np.arange(lo, hi)
        w.write(
            {HOOK: pool[shift : shift + hi - lo]},
            tokens=(idx % 50000).astype(np.int32),
            seq_id=(idx // per).astype(np.int64),
            position=(idx % per + 1).astype(np.int32),
        )
        print(f"\rwrite {hi * d * 2 / 2**30:.1f} GiB", end="", file=sys.stderr, flush=True)
    w.close()
    seconds = time.perf_counter() - t0
    print(file=sys.stderr)
    return {"rows": rows, "write_s": seconds, "write_gb_s": rows * d * 2 / seconds / 1e9}


def activation_files(path: Path) -> list[Path]:
    return sorted(p for p in (path / "acts" / HOOK).rglob("*") if p.is_file() and p.name != "zarr.json")


def drop_cache(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cached_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def sequential_dd(files: list[Path]) -> dict:
    total = sum(p.stat().st_size for p in files)
    t0 = time.perf_counter()
    for p in files:
        subprocess.run(["dd", f"if={p}", "of=/dev/null", "bs=64M", "status=none"], check=True)
    seconds = time.perf_counter() - t0
    return {"bytes": total, "seconds": seconds, "gb_s": total / seconds / 1e9}


def loader_child(store_path: str, buffer_gib: float, workers: int) -> dict:
    """One cold epoch of the train split (runs in a child process, so its peak RSS is its own)."""
    import torch

    from osae.store import ActivationStore, LoaderConfig, ShuffledLoader

    torch.set_num_threads(2)
    store = ActivationStore(store_path)
    cfg = LoaderConfig(batch_size=4096, buffer_bytes=int(buffer_gib * 2**30), read_workers=workers)
    t0 = time.perf_counter()
    ld = ShuffledLoader(store, HOOK, cfg)
    it = ld.epoch_batches()
    first = next(it)
    t_first = time.perf_counter() - t0
    rows, checksum = len(first), float(first[:, 0].sum())
    t1 = time.perf_counter()
    for x in it:
        rows += len(x)
        checksum += float(x[0, 0])  # touch every batch, so nothing is skipped
    t_rest = time.perf_counter() - t1
    steady_rows = rows - len(first)
    return {
        "buffer_gib": buffer_gib,
        "read_workers": workers or "auto",
        "first_batch_s": t_first,
        "rows": rows,
        "steady_gb_s": steady_rows * ROW_BYTES / t_rest / 1e9,
        "epoch_s": t_first + t_rest,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "checksum": checksum,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--gib", type=float, default=32.0)
    ap.add_argument(
        "--runs", default="1:0,8:0", help="loader runs as BUFFER_GIB:READ_WORKERS (0: the default), comma-separated"
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reuse", action="store_true", help="keep an existing store at --dir")
    ap.add_argument("--child", nargs=3, metavar=("STORE", "BUFFER_GIB", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(loader_child(args.child[0], float(args.child[1]), int(args.child[2]))))
        return
    result: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM",
        "python": platform.python_version(),
    }
    store = args.dir
    if not (args.reuse and (store / "zarr.json").exists()):
        result["write"] = build_store(store, int(args.gib * 2**30 // ROW_BYTES))
    files = activation_files(store)
    result["store_gib"] = sum(p.stat().st_size for p in files) / 2**30
    result["loader"] = []
    for run in args.runs.split(","):
        gib, workers = run.split(":")
        # The disk's rate drifts between minutes (0.6-1.1 GB/s seen), so each loader run has its own dd
        drop_cache(store)
        result.setdefault("cached_gib_after_drop", cached_gib())
        dd = sequential_dd(files)
        print(f"dd: {dd['gb_s']:.2f} GB/s", file=sys.stderr)
        drop_cache(store)
        child = subprocess.run(
            [sys.executable, __file__, "--dir", str(store), "--out", "-", "--child", str(store), gib, workers],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(child.stdout.strip().splitlines()[-1])
        row["dd_gb_s"] = dd["gb_s"]
        row["vs_dd"] = row["steady_gb_s"] / dd["gb_s"]
        result["loader"].append(row)
        print(json.dumps(row), file=sys.stderr)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
