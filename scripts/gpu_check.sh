#!/usr/bin/env bash
# One-command GPU check, for a machine with a CUDA GPU and a CUDA build of torch:
# builds the ops ahead of time (setup.py: CPU per ISA, and CUDA), runs the kernel and
# hash-index tests on the GPU, the hash-index
# benchmark, and the embedding benchmark where torchrec is installed.
# The lent GPU machines have torch but no torchrec/fbgemm-gpu (the CUDA fbgemm wheel is
# too large to carry), so this uses the machine's own python and installs only what the
# op tests need; torchrec is installed with --no-deps when its wheel is available.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
"$PY" -m pip install -q numpy pytest ninja 2>/dev/null || true
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py -q build_ext --inplace >/tmp/torchrec_ext_build.log 2>&1 \
  || { tail -n 80 /tmp/torchrec_ext_build.log; exit 1; }
"$PY" -c "import torch; from torchrec_ext.ops import _native; print('loaded', _native.load(), 'cuda ops:', _native._library('cuda'))"
"$PY" -m pytest -q tests/test_hashed_ops.py tests/test_hashed_positions.py tests/test_qr_ops.py tests/test_dynamic_ops.py tests/test_hash_table.py -k cuda "$@"
"$PY" benchmarks/bench_hash_table.py --device cuda --keys 16000000 --batch 1048576 --dim 8
# The embedding benchmark compares against TorchRec's EBC, so it needs torchrec and the CUDA
# fbgemm-gpu; with them, it records the GPU figures and their copy-bandwidth bound.
if "$PY" -c "import torchrec, fbgemm_gpu" 2>/dev/null; then
  "$PY" benchmarks/bench_embeddings.py --device cuda --out benchmarks/results
  "$PY" benchmarks/bench_embeddings.py --device cuda --step forward --out benchmarks/results/forward
else
  echo "torchrec or fbgemm_gpu missing: the embedding benchmark (TorchRec's EBC is its baseline) was skipped"
fi
