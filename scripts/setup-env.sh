#!/usr/bin/env bash
# Create .venv (once) with osae and its test tools. A machine whose python3 already has torch (a GPU box)
# keeps that torch; elsewhere torch==2.13.0 (a CPU wheel here) is installed before anything else, so no
# later install can pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
