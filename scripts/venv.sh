#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv with torch==2.13.0 and retquant installed.
# torch is installed first and pinned, so pip never resolves an unpinned torch (which would pull
# several GB of CUDA packages). Re-running is cheap: the install is skipped while pyproject.toml
# and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${RETQUANT_VENV:-.venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.retquant-install-stamp"
want=$(cat pyproject.toml scripts/venv.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install -q torch==2.13.0
  "$venv/bin/python" -m pip install -q -e '.[dev,triton]'
  # torchscale: the reference RetNet layer the tests compare with. --no-deps, because its
  # requirements pull a CUDA torch, timm and fairscale; its component modules need none of them.
  "$venv/bin/python" -m pip install -q --no-deps torchscale==0.3.0
  echo "$want" >"$stamp"
fi
