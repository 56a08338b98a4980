#!/usr/bin/env bash
# Runs the whole test suite (CPU; Triton kernels in the interpreter). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
