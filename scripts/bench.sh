#!/usr/bin/env bash
# The main job: set up .venv, then run the demo/benchmark on its default shape.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/python -m bench.demo "$@"
