#!/usr/bin/env bash
# The main job end to end on the embedded default model and text, offline (installs what it needs first):
# harvest layer 3 of the embedded model over the Python standard library, check the store, train OSAE,
# Matryoshka, BatchTopK and TopK SAEs (several seeds, one pass), and compare their consistency.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
. .venv/bin/activate
OUT=${OUT:-out/demo}
mkdir -p "$OUT"
osae harvest --layer 3 --tokens 1000000 --out "$OUT/stdlib-l3.zarr"
osae store info "$OUT/stdlib-l3.zarr"
osae store verify "$OUT/stdlib-l3.zarr"
# Every step is safe to re-run after any interruption: the same command resumes (or restarts) its work.
osae fit --store "$OUT/stdlib-l3.zarr" --sweep scripts/demo_sweep.json --tokens 2000000 --batch-size 1024 --out "$OUT/run"
osae evaluate "$OUT/run" --store "$OUT/stdlib-l3.zarr" --out "$OUT/report" --max-tokens 25000 --lm-tokens 20000
