#!/usr/bin/env bash
# Set up a virtual environment (first run only), lint, and run the test suite on the CPU.
# Extra pytest arguments pass through, e.g. ./scripts/test.sh -m slow (the clean-venv wheel install test).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests scripts
.venv/bin/python -m pytest -q "$@"
