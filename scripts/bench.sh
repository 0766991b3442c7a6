#!/usr/bin/env bash
# The main job: set up .venv, then run the benchmark suite on its default shape (python -m bench).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/python -m bench "$@"
