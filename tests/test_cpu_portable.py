"""The CPU sources also build for CPUs without AVX-512 (the vector paths sit behind
`#if` guards, with scalar code beside them): each compiles for x86-64-v3 (AVX2)."""

import glob
import os
import platform
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch.utils.cpp_extension as ext

CPU_FILES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "torchrec_ext", "csrc", "cpu", "*.cpp")))


@pytest.mark.skipif(shutil.which("g++") is None or platform.machine() != "x86_64", reason="needs g++ on x86-64")
@pytest.mark.parametrize("src", CPU_FILES, ids=os.path.basename)
def test_cpu_source_compiles_without_avx512(src):
    includes = [f"-I{p}" for p in ext.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    cmd = ["g++", "-std=c++20", "-march=x86-64-v3", "-fopenmp", "-O0", "-c", src, "-o", os.devnull] + includes
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 only")
def test_hashed_kernels_pass_their_tests_without_avx512():
    """The hashed kernels' scalar paths (what a CPU without AVX-512 runs) pass the same
    reference tests: the extension is built for x86-64-v3 in a build directory of its own."""
    env = dict(os.environ, TORCHREC_EXT_MARCH="x86-64-v3")
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not cuda",
           os.path.join(here, "test_hashed_ops.py"), os.path.join(here, "test_hashed_positions.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=here, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert " passed" in proc.stdout
