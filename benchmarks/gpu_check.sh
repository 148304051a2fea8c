#!/usr/bin/env bash
# The first-GPU-machine check (issue 13): harvest fp16/bf16, fit every architecture with bf16 autocast,
# evaluate, DDP over every GPU; a table in $OUT/gpu_check.md (else ./gpu_check.md) and .json. Offline.
#
#     bash benchmarks/gpu_check.sh                                    # GPU machine, under 5 minutes
#     OSAE_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh --quick  # dry check of the script on CPU
#     bash benchmarks/gpu_check.sh --fetch-wheels                     # here, with PyPI: wheels for the GPU box
#
# Which Python: $OSAE_GPU_CHECK_PYTHON if set, else the first of .venv/bin/python and python3 whose torch
# suits the device (CUDA for cuda). osae runs from this checkout (PYTHONPATH), so no install is needed. A
# .venv made here holds a CPU torch (and may not even start on another machine): on a GPU box the system
# python3 with its CUDA torch is used instead. scripts/setup-env.sh runs only when no Python has torch at
# all, and it needs PyPI. Packages osae needs that the interpreter lacks (the H200 image has no zarr,
# numcodecs, google-crc32c, donfig) are installed offline from wheels in $OSAE_WHEELS (default .whl/,
# git-ignored; fill it with --fetch-wheels where PyPI is reachable) into a scratch directory.
# Other arguments go to benchmarks/gpu_check.py (--quick, --out-dir, --work, --keep, --budget-s).
set -euo pipefail
CALLER=$PWD  # relative --out-dir / --work, and the default ./gpu_check.md, are the caller's
cd "$(dirname "$0")/.."
REPO=$PWD
DEVICE=${OSAE_GPU_CHECK_DEVICE:-cuda}
WHEELS=${OSAE_WHEELS:-.whl}
# The import names osae needs at run time (pyproject's dependencies less the remote-store ones).
MODULES="torch numpy zarr numcodecs google_crc32c fsspec typer rich tqdm safetensors psutil transformers \
tokenizers accelerate pyarrow scipy matplotlib yaml"

if [ "${1:-}" = "--fetch-wheels" ]; then
  # Wheels for the GPU image's Python (3.12, x86-64 manylinux), at the versions this checkout's .venv runs.
  TARGET_PY=${OSAE_WHEEL_PYTHON:-3.12}
  PY=.venv/bin/python
  [ -x "$PY" ] || PY=python3
  mkdir -p "$WHEELS"
  specs=$("$PY" - <<'EOF'
import importlib.metadata as md
pins = {"zarr": "3.1.6", "donfig": "0.8.1.post1", "numcodecs": "0.16.6", "google-crc32c": "1.9.0"}
out = []
for name, fallback in pins.items():
    try:
        out.append(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        out.append(f"{name}=={fallback}")
print(" ".join(out))
EOF
)
  plat=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    plat+=(--platform "$p")
  done
  # shellcheck disable=SC2086  # specs is a list of name==version words
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET_PY" --implementation cp \
    "${plat[@]}" -d "$WHEELS" $specs
  echo "gpu_check: wheels for Python $TARGET_PY in $WHEELS/ (carry it to the GPU machine):"
  ls -1 "$WHEELS"
  exit 0
fi

# torch_ok PY: PY imports torch, with a CUDA GPU unless the device is cpu.
torch_ok() {
  if [ "$DEVICE" = cpu ]; then
    "$1" -c "import torch" >/dev/null 2>&1
  else
    "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1
  fi
}

PY=${OSAE_GPU_CHECK_PYTHON:-}
if [ -z "$PY" ]; then
  for cand in "$REPO/.venv/bin/python" python3; do
    if command -v "$cand" >/dev/null 2>&1 && torch_ok "$cand"; then
      PY=$(command -v "$cand")
      break
    fi
  done
fi
if [ -z "$PY" ]; then
  if [ "$DEVICE" != cpu ]; then
    echo "gpu_check: no Python here has a torch that sees a CUDA GPU (tried .venv/bin/python, python3);" \
      "set OSAE_GPU_CHECK_PYTHON to one, or OSAE_GPU_CHECK_DEVICE=cpu" >&2
    exit 1
  fi
  echo "gpu_check: no Python with torch; creating .venv with scripts/setup-env.sh (needs PyPI)" >&2
  bash scripts/setup-env.sh
  PY=$REPO/.venv/bin/python
fi

export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
missing() {
  "$PY" - $MODULES <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}
lacking=$(missing)
if [ -n "$lacking" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/osae-gpu-check-site.XXXXXX")
  echo "gpu_check: $PY lacks $lacking; installing $WHEELS/*.whl into $SITE (offline)" >&2
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH=$PYTHONPATH:$SITE  # after the checkout, so the checkout's osae is the one imported
  lacking=$(missing)
fi
if [ -n "$lacking" ]; then
  echo "gpu_check: $PY cannot import: $lacking. Where PyPI is reachable run" \
    "'bash benchmarks/gpu_check.sh --fetch-wheels' and bring $WHEELS/ along (or set OSAE_WHEELS)" >&2
  exit 1
fi
if [ "$DEVICE" = cpu ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the dry check stays light on a shared machine
fi
echo "gpu_check: $PY ($("$PY" -c 'import torch; print("torch", torch.__version__)')), device $DEVICE" >&2
rc=0
(cd "$CALLER" && "$PY" "$REPO/benchmarks/gpu_check.py" --device "$DEVICE" "$@") || rc=$?
[ -z "${SITE:-}" ] || rm -rf "$SITE"
exit "$rc"
