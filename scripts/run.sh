#!/usr/bin/env bash
# Sets up .venv and runs loraplex on a locally made model. Extra args go to `loraplex demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/loraplex demo "$@"
