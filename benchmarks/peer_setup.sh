#!/usr/bin/env bash
# Create .venv-peers (once; re-running is safe): EleutherAI's sparsify (eai-sparsify from PyPI) beside osae
# itself, with torch held at the project's 2.13.0 by a constraints file, so benchmarks/peer_sparsify.py can
# drive both trainers on the same torch; SAELens and dictionary_learning for benchmarks/peer_formats.py. Nothing here may pull a CUDA build of torch (nvidia-* or triton
# wheels): every install is resolved with --dry-run first and refused if it would.
#
#     bash benchmarks/peer_setup.sh            # then: .venv-peers/bin/python benchmarks/peer_sparsify.py --help
#
# On a machine whose pip finds no CPU wheel of torch 2.13.0, give it one first, e.g.
# PIP_FIND_LINKS=/path/to/wheels, or PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-peers
TORCH=2.13.0

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"  # no system site-packages: a system torch must not leak in
fi
PIP=("$VENV/bin/python" -m pip)
CONSTRAINTS="$VENV/constraints.txt"
echo "torch==$TORCH" >"$CONSTRAINTS"

# Resolve without installing and refuse a plan that changes torch's version or brings CUDA wheels.
check_plan() {
  local report="$VENV/plan.json"
  rm -f "$report"
  if ! "${PIP[@]}" install -q --dry-run --ignore-installed --report "$report" -c "$CONSTRAINTS" "$@"; then
    echo "peer_setup: pip cannot install $* with torch==$TORCH (see above); aborting" >&2
    exit 1
  fi
  "$VENV/bin/python" - "$report" "$TORCH" "$*" <<'EOF'
import json, sys
report, torch_version, what = sys.argv[1], sys.argv[2], sys.argv[3]
plan = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(open(report))["install"]}
cuda = sorted(n for n in plan if n.startswith("nvidia-") or n in ("triton", "pytorch-triton"))
if cuda:
    sys.exit(f"peer_setup: installing {what} would pull CUDA wheels ({', '.join(cuda)}); give pip a CPU torch")
found = plan.get("torch")
if found is not None and found.split("+")[0] != torch_version:
    sys.exit(f"peer_setup: installing {what} would bring torch {found}, not {torch_version}; aborting")
EOF
}

"${PIP[@]}" install -q --upgrade pip
check_plan "torch==$TORCH"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "torch==$TORCH"
check_plan eai-sparsify
"${PIP[@]}" install -q -c "$CONSTRAINTS" eai-sparsify
# SAELens and dictionary_learning for benchmarks/peer_formats.py (their own loaders and savers against osae's).
check_plan sae-lens dictionary-learning
"${PIP[@]}" install -q -c "$CONSTRAINTS" sae-lens dictionary-learning
# dictionary-learning pulls torchvision, whose compiled operators do not load under this torch ("operator
# torchvision::nms does not exist"), and transformers then fails to import; nothing here needs torchvision.
"${PIP[@]}" uninstall -q -y torchvision
check_plan -e .
"${PIP[@]}" install -q -c "$CONSTRAINTS" -e .

# The installed result, whatever pip decided: torch at the project's version, no CUDA runtime wheels.
"$VENV/bin/python" - "$TORCH" <<'EOF'
import importlib.metadata as md, sys
import torch
want = sys.argv[1]
if torch.__version__.split("+")[0] != want:
    sys.exit(f"peer_setup: .venv-peers has torch {torch.__version__}, not {want}; remove .venv-peers and rerun")
cuda = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia-"))
if cuda:
    sys.exit(f"peer_setup: .venv-peers holds CUDA wheels ({', '.join(cuda)}); remove .venv-peers and rerun")
import osae, sparsify, sae_lens, dictionary_learning  # noqa: E401,F401 (all importable from one interpreter)
print(f"peer_setup: .venv-peers ready: torch {torch.__version__}, eai-sparsify {md.version('eai-sparsify')}, "
      f"osae {md.version('osae')}")
EOF
