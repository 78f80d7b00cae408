#!/usr/bin/env bash
# Builds (or finds cached) torchrec_ext's native ops; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -c "from torchrec_ext.ops import _native; _native.load(); print('native ops ready in', _native.build_dir())"
