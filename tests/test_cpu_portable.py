"""The CPU sources also build for CPUs without AVX-512 (the vector paths sit behind
`#if` guards, with scalar code beside them): each compiles for x86-64-v3 (AVX2)."""

import glob
import os
import platform
import shutil
import subprocess
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
