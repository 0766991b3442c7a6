#!/usr/bin/env bash
# The test suite: set up .venv, lint, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
