#!/usr/bin/env bash
# Idempotent setup: Python venv with the pinned CPU torch and the export stack, the web app's npm packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.setup-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -e ".[export,native,test]"
  touch "$stamp"
fi
if [ ! -d web/node_modules ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
  (cd web && npm ci --no-audit --no-fund)
fi
# the default model's dataset source (Twitter emoji, CC-BY 4.0) — used by training and its tests
if [ ! -d train/node_modules ]; then
  (cd train && npm ci --no-audit --no-fund)
fi
