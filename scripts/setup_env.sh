#!/usr/bin/env bash
# Creates .venv with the pinned stack, idempotently (a stamp file records a finished install).
# torchrec 1.8.0 depends on the 2.7 GB CUDA fbgemm-gpu; on CPU we install fbgemm-gpu-cpu and
# torchrec with --no-deps, then torchrec's own light dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.deps-v2
if [ -f "$STAMP" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q --progress-bar off)
[ -d /opt/wheels ] && PIP+=(--find-links /opt/wheels)
"${PIP[@]}" torch==2.13.0 setuptools
if .venv/bin/python -c 'import torch,sys; sys.exit(0 if torch.version.cuda else 1)'; then
  "${PIP[@]}" fbgemm-gpu==1.8.0
else
  "${PIP[@]}" fbgemm-gpu-cpu==1.8.0
fi
"${PIP[@]}" --no-deps torchrec==1.8.0
"${PIP[@]}" tensordict torchmetrics==1.0.3 pyre-extensions iopath tqdm numpy pytest ninja matplotlib
# the package itself, editable (its native ops build on first import, cached in torchrec_ext/_build)
"${PIP[@]}" --no-deps --no-build-isolation -e .
touch "$STAMP"
