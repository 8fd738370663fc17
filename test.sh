#!/usr/bin/env bash
# One command: set up (idempotent) and run every test, browser tests included.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -rs "$@"
