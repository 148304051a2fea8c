#!/usr/bin/env bash
# Run the test suite (installs what it needs first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
. .venv/bin/activate
python -m pytest -q "$@"
