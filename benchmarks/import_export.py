"""`osae store import` / `export` of a 2 GiB .npy: peak RSS and throughput against a plain file copy.

    python benchmarks/import_export.py [--gib 2] [--dir /tmp/osae-bench-import]

Writes a float32 (rows, 512) .npy of the given size block by block, then times, one after the other on the
same warm page cache: a plain copy of the file (read and write in 16 MiB blocks), `osae store import` and
`osae store export` back to .npy, each in its own process whose peak RSS is read from wait4. Each timing
starts after `sync` and includes a `sync` at its end (the written data on disk), so background write-back
of an earlier step does not land in a later one; each is repeated --repeats times and the median reported.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GENERATE = """
import sys
import numpy as np
path, rows, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, d))
rng = np.random.default_rng(0)
for lo in range(0, rows, 65536):
    out[lo : lo + 65536] = rng.standard_normal((min(65536, rows - lo), d), dtype=np.float32)
out.flush()
"""


# A plain byte copy in 16 MiB blocks (not shutil.copyfile: copy_file_range may clone extents without
# moving the data, which no import can do).
COPY = """
import sys
with open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as dst:
    while block := src.read(16 << 20):
        dst.write(block)
"""


def run(cmd: list[str]) -> tuple[float, int]:
    """(seconds including the final sync, peak RSS in bytes) of a child process."""
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    os.sync()
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr.read().decode()[-500:]}")
    return seconds, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--dir", default="/tmp/osae-bench-import")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    d = 512
    rows = int(args.gib * 2**30) // (4 * d)
    src = root / "acts.npy"
    # Written by a child: a child's peak RSS (wait4) starts from its parent's high-water mark at fork, so this
    # process must never hold much memory itself.
    subprocess.run([sys.executable, "-c", GENERATE, str(src), str(rows), str(d)], check=True)
    nbytes = src.stat().st_size
    results = {"copy": [], "import": [], "export": []}
    for _ in range(args.repeats):
        for path in ("copy.npy", "back.npy"):
            (root / path).unlink(missing_ok=True)
        shutil.rmtree(root / "s.zarr", ignore_errors=True)
        results["copy"].append(run([sys.executable, "-c", COPY, str(src), str(root / "copy.npy")]))
        results["import"].append(
            run(
                [
                    sys.executable,
                    "-m",
                    "osae",
                    "store",
                    "import",
                    str(src),
                    "--out",
                    str(root / "s.zarr"),
                    "--hook",
                    "blocks.3.hook_resid_post",
                ]
            )
        )
        results["export"].append(
            run(
                [sys.executable, "-m", "osae", "store", "export", str(root / "s.zarr"), "--out", str(root / "back.npy")]
            )
        )
    (copy_s, copy_rss), (imp_s, imp_rss), (exp_s, exp_rss) = (
        (float(np.median([t for t, _ in results[k]])), max(r for _, r in results[k]))
        for k in ("copy", "import", "export")
    )
    same = subprocess.run(["cmp", str(src), str(root / "back.npy")]).returncode == 0
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                "source_bytes": nbytes,
                "rows": rows,
                "width": d,
                "copy_s": round(copy_s, 2),
                "copy_gb_s": round(nbytes / copy_s / 1e9, 3),
                "copy_peak_rss_mib": copy_rss >> 20,
                "import_s": round(imp_s, 2),
                "import_gb_s": round(nbytes / imp_s / 1e9, 3),
                "import_peak_rss_mib": imp_rss >> 20,
                "export_s": round(exp_s, 2),
                "export_gb_s": round(nbytes / exp_s / 1e9, 3),
                "export_peak_rss_mib": exp_rss >> 20,
                "import_vs_copy": round(copy_s / imp_s, 3),
                "export_vs_copy": round(copy_s / exp_s, 3),
                "round_trip_identical": same,
                "repeats": args.repeats,
                "all_seconds": {k: [round(t, 2) for t, _ in v] for k, v in results.items()},
            }
        )
    )
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
