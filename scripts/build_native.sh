#!/usr/bin/env bash
# Builds torchrec_ext's native ops into the checkout (torchrec_ext/_C_*.so), as `pip install`
# builds them into a wheel. Incremental: ninja recompiles only what changed. Quiet unless
# the build fails (the log is in build/native.log).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
if ! MAX_JOBS=${MAX_JOBS:-$(nproc)} .venv/bin/python setup.py -q build_ext --inplace >build/native.log 2>&1; then
  tail -n 60 build/native.log >&2
  echo "native build failed; full log in build/native.log" >&2
  exit 1
fi
.venv/bin/python -c "from torchrec_ext.ops import _native; print('native ops ready:', _native.load())"
