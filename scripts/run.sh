#!/usr/bin/env bash
# Sets up .venv and serves loraplex on http://127.0.0.1:8000: the OpenAI-compatible API, adapter
# uploads and the admin API, on a tiny model made locally unless --model (or LORAPLEX_MODEL)
# names one. The first start prints an admin key. Extra args go to `loraplex serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/loraplex serve "$@"
