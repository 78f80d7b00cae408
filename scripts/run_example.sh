#!/usr/bin/env bash
# The main job: sets up .venv and the native build if needed, then trains DLRM with every
# variant over 2 CPU processes and prints the comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh 2> >(grep -v "WARNING: Location" >&2)
bash scripts/build_native.sh
exec .venv/bin/python examples/dlrm_main.py "$@"
