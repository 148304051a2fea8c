#!/usr/bin/env bash
# The main job end to end on data every machine can make (installs what it needs first).
# Today: the store stage on the OSAE paper's toy data. Harvest, fit and evaluate join as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
. .venv/bin/activate
OUT=${OUT:-out/demo}
mkdir -p "$OUT"
osae toy --out "$OUT/toy.zarr" --overwrite
osae store info "$OUT/toy.zarr"
osae store verify "$OUT/toy.zarr"
osae store copy "$OUT/toy.zarr" "$OUT/toy-zstd.zarr" --compressor zstd --overwrite
python - "$OUT/toy.zarr" <<'PY'
import sys
from osae.store import ActivationStore
from osae.store.loader import LoaderConfig, ShuffledLoader
store = ActivationStore(sys.argv[1])
loader = ShuffledLoader(store, config=LoaderConfig(batch_size=1024, seed=0))
n = sum(len(x) for x in loader.epoch_batches())
print(f"one shuffled epoch: {n:,} training rows in batches of 1024")
PY
