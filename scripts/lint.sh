#!/usr/bin/env bash
# ruff (Python) and clang-format (C++/CUDA) in check mode; run by scripts/run_tests.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check --quiet .
.venv/bin/clang-format --dry-run -Werror torchrec_ext/csrc/*.h torchrec_ext/csrc/*.cpp \
  torchrec_ext/csrc/cpu/* torchrec_ext/csrc/cuda/*
