#!/usr/bin/env bash
# The test command: sets up .venv and the native build if needed, lints, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh 2> >(grep -v "WARNING: Location" >&2)
bash scripts/lint.sh
bash scripts/build_native.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
