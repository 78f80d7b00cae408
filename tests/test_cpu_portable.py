"""The libraries built for CPUs without AVX-512 (setup.py builds one per ISA level, and
torchrec_ext loads the one torch's capability check picks) pass the kernels' reference
tests: each runs in a process whose ATEN_CPU_CAPABILITY forces that level."""

import os
import platform
import subprocess
import sys

import pytest

from torchrec_ext.ops import _native

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the ISA libraries are built on x86-64 only")
@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_kernels_pass_their_tests_on_a_lower_isa(isa):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa)
    probe = subprocess.run([sys.executable, "-c", "from torchrec_ext.ops import _native; print(_native.load())"],
                           capture_output=True, text=True, env=env, cwd=HERE, timeout=300)
    assert probe.stdout.strip() == isa, probe.stdout + probe.stderr
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not cuda",
           "test_hashed_ops.py", "test_hashed_positions.py", "test_qr_ops.py", "test_dynamic_ops.py"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert " passed" in proc.stdout


@pytest.mark.skipif(os.environ.get("TORCHREC_EXT_JIT") == "1", reason="the JIT build targets this CPU")
def test_the_loaded_library_is_the_best_this_cpu_runs():
    import torch

    best = {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(), "default")
    assert _native.load() == best
