#!/usr/bin/env bash
# Creates .venv with the tested stack, idempotently (a stamp file records a finished install).
# torchrec 1.8.0 depends on the 2.7 GB CUDA fbgemm-gpu; on CPU we install fbgemm-gpu-cpu and
# torchrec with --no-deps, then torchrec's own light dependencies (pyproject's extras).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.deps-v4
if [ -f "$STAMP" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
LOG=.venv/setup.log
echo "setting up .venv (pip's output: $LOG)"
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q --progress-bar off)
[ -d /opt/wheels ] && PIP+=(--find-links /opt/wheels)
# pip's output goes to the log (its resolver always complains that torchrec's CUDA
# fbgemm-gpu is missing, by design here); a failure prints the log's tail.
pip_quiet() { "${PIP[@]}" "$@" >>"$LOG" 2>&1 || { tail -n 40 "$LOG"; exit 1; }; }
pip_quiet torch==2.13.0 setuptools wheel
if .venv/bin/python -c 'import torch,sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
  pip_quiet fbgemm-gpu==1.8.0
else
  pip_quiet fbgemm-gpu-cpu==1.8.0
fi
pip_quiet --no-deps torchrec==1.8.0
pip_quiet tensordict torchmetrics==1.0.3 pyre-extensions iopath tqdm numpy pytest ninja matplotlib \
  hypothesis==6.170.27 ruff==0.17.6 clang-format==21.1.8
# The package itself, from this checkout: a .pth entry puts the checkout on the path (an
# editable install without pip's build), and scripts/build_native.sh compiles the ops in
# place, incrementally, so a change to a kernel needs no reinstall.
.venv/bin/python -c 'import os, sysconfig; open(os.path.join(sysconfig.get_paths()["purelib"], "torchrec_ext_checkout.pth"), "w").write(os.getcwd() + "\n")'
touch "$STAMP"
