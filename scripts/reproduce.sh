#!/usr/bin/env bash
# The papers' experiments at CPU scale (installs what it needs first); writes docs/results.md and
# docs/results/*.png. Stages are cached under out/reproduce, so an interrupted run continues.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
. .venv/bin/activate
python scripts/reproduce.py ${OUT:+--out "$OUT"} "$@"
