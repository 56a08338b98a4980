#!/usr/bin/env bash
# Creates .venv in the repository and installs loraplex with its test tools into it; installs
# Debian's Chromium for the dashboard's browser tests (Playwright drives it, downloads none).
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
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: the dashboard's browser tests need /usr/bin/chromium;" \
            "install it with: sudo apt-get install chromium" >&2
    fi
fi
