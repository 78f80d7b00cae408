#!/usr/bin/env bash
# Runs tests against the CPU ops built with AddressSanitizer and UndefinedBehaviorSanitizer:
# an out-of-bounds read or write, a use after free or an undefined operation in a kernel
# aborts the run with the sanitizer's report instead of passing unnoticed.
#
#   bash scripts/sanitize.sh                      # the native-op fuzz test (the default)
#   bash scripts/sanitize.sh tests/test_qr_ops.py # any single-process tests
#
# The sanitized library (build/sanitize, incremental) replaces the built ops through
# tests/conftest.py's --native-lib; multi-process tests would load the normal build in
# their workers, so give it single-process tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
mkdir -p build/sanitize
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
# The sanitizer runtimes must come first in a python process that was not built with them
# (the build step loads the library too).
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# Leaks: CPython and torch keep allocations until exit by design. alloc_dealloc_mismatch:
# libtorch's own new/free pairs, outside our code. A single allocation above 4 GiB fails
# (a fuzzed size must raise, not exhaust the machine).
export ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1:allocator_may_return_null=1:max_allocation_size_mb=4096
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "building the sanitized CPU ops (build/sanitize/build.log)"
.venv/bin/python - "$SAN" >build/sanitize/build.log 2>&1 <<'PY' || { tail -n 40 build/sanitize/build.log; exit 1; }
import importlib.util, os, sys
from torch.utils.cpp_extension import load
spec = importlib.util.spec_from_file_location("_sources", "torchrec_ext/ops/_sources.py")
src = importlib.util.module_from_spec(spec); spec.loader.exec_module(src)
san = sys.argv[1].split()
load(name="torchrec_ext_sanitized", sources=[os.path.join(src.ROOT, p) for p in src.cpu_sources()],
     build_directory="build/sanitize", is_python_module=False, verbose=True,
     extra_cflags=["-O1", "-g", "-march=native", "-fopenmp", "-std=c++20", *san],
     extra_ldflags=["-fopenmp", *san])
PY
LIB=$(ls build/sanitize/torchrec_ext_sanitized*.so)
[ $# -gt 0 ] || set -- tests/test_fuzz_native_ops.py
exec .venv/bin/python -m pytest -q -s -p no:cacheprovider --native-lib "$LIB" "$@"
