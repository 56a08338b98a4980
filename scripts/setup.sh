#!/usr/bin/env bash
# Creates .venv in the repository and installs loraplex with its test tools into it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
fi
# torch first, pinned: a bare "torch" requirement would pull a multi-GB CUDA build on a CPU box.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet "torch==2.13.0"
fi
.venv/bin/pip install --quiet -e ".[dev]"
