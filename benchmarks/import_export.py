"""`osae store import` / `export` of a 2 GiB .npy: peak RSS and throughput against a plain file copy.

    python benchmarks/import_export.py [--gib 2] [--dir /tmp/osae-bench-import]

Writes a float32 (rows, 512) .npy of the given size block by block, then times, one after the other on the
same warm page cache: a plain copy of the file (shutil.copyfile), `osae store import` and `osae store export`
back to .npy, each in its own process whose peak RSS is read from wait4. Prints one JSON line.
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


def run(cmd: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr.read().decode()[-500:]}")
    return seconds, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--dir", default="/tmp/osae-bench-import")
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
    copy_s, copy_rss = run([sys.executable, "-c", f"import shutil; shutil.copyfile({str(src)!r}, {str(root / 'copy.npy')!r})"])
    imp_s, imp_rss = run([sys.executable, "-m", "osae", "store", "import", str(src), "--out", str(root / "s.zarr"),
                          "--hook", "blocks.3.hook_resid_post"])
    exp_s, exp_rss = run([sys.executable, "-m", "osae", "store", "export", str(root / "s.zarr"), "--out", str(root / "back.npy")])
    same = subprocess.run(["cmp", str(src), str(root / "back.npy")]).returncode == 0
    print(json.dumps({
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "source_bytes": nbytes, "rows": rows, "width": d,
        "copy_s": round(copy_s, 2), "copy_gb_s": round(nbytes / copy_s / 1e9, 3), "copy_peak_rss_mib": copy_rss >> 20,
        "import_s": round(imp_s, 2), "import_gb_s": round(nbytes / imp_s / 1e9, 3), "import_peak_rss_mib": imp_rss >> 20,
        "export_s": round(exp_s, 2), "export_gb_s": round(nbytes / exp_s / 1e9, 3), "export_peak_rss_mib": exp_rss >> 20,
        "import_vs_copy": round(copy_s / imp_s, 3), "export_vs_copy": round(copy_s / exp_s, 3), "round_trip_identical": same,
    }))
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
