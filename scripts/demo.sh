#!/usr/bin/env bash
# Install (scripts/setup.sh) and run the demo end to end on synthetic data on a local Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m jobs.demo "$@"
