#!/usr/bin/env bash
# The main job: sets up .venv and the native build if needed, then runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh 2> >(grep -v "WARNING: Location" >&2)
bash scripts/build_native.sh
exec .venv/bin/python examples/demo_dmp.py "$@"
