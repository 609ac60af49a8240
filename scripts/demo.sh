#!/usr/bin/env bash
# Sets up .venv if needed, then runs the demo: scripts/demo.sh [GALLERY_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
