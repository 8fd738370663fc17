#!/usr/bin/env bash
# One command: set everything up, export the default bundle if needed, build and serve the page.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/diffusion-explainer serve "$@"
