"""Every CUDA source compiles with nvcc, even on a machine without a GPU.

The CPU torch wheel ships ATen/c10's CUDA headers except the CMake-generated
c10/cuda/impl/cuda_cmake_macros.h, so a two-line stub stands in for it. CI has nvcc;
where it is absent the test says so and skips.
"""

import glob
import os
import shutil
import subprocess

import pytest
import torch.utils.cpp_extension as ext

CSRC = os.path.join(os.path.dirname(__file__), "..", "torchrec_ext", "csrc")
CU_FILES = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))


def nvcc() -> str:
    found = shutil.which("nvcc") or (os.path.join(ext.CUDA_HOME, "bin", "nvcc") if ext.CUDA_HOME else None)
    return found if found and os.path.exists(found) else None


@pytest.mark.skipif(nvcc() is None, reason="nvcc not installed")
@pytest.mark.parametrize("cu", CU_FILES, ids=os.path.basename)
def test_cuda_source_compiles(cu, tmp_path):
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [f"-I{p}" for p in ext.include_paths()] + [f"-I{tmp_path}"]
    cmd = [nvcc(), "-std=c++20", "-O0", "-c", cu, "-o", str(tmp_path / "out.o"),
           "-arch=sm_90", "--expt-relaxed-constexpr", "-w"] + includes
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_every_op_has_a_cpu_and_a_cuda_kernel():
    """Kernels of an op sit side by side: the CPU and CUDA files register the same ops, and
    those are exactly the ops ops.cpp declares."""
    import glob
    import re

    impls = lambda files: {n for p in files for n in re.findall(r'm\.impl\("([a-z_]+)"', open(p).read())}
    declared = set(re.findall(r'm\.def\(\s*"([a-z_]+)\(', open(os.path.join(CSRC, "ops.cpp")).read()))
    cpu = impls(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    assert len(declared) > 10
    assert cpu == declared, (cpu ^ declared)
    assert impls(CU_FILES) == declared, (impls(CU_FILES) ^ declared)
