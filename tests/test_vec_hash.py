"""The 8-lane exact division the block-mode kernels use (csrc/cpu/vec_hash.h) agrees with
the hardware's divide, checked by a small native program built with the extension's flags.
(The kernels built on it are checked against the Python reference in test_hashed_ops.py.)"""

import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "..", "torchrec_ext", "csrc")


def _has_avx512dq() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512dq" in flags and " avx512f" in flags


@pytest.mark.skipif(shutil.which("g++") is None or not _has_avx512dq(), reason="needs g++ and AVX-512 DQ")
def test_div_x8_equals_the_hardware_divide(tmp_path):
    exe = tmp_path / "div_x8_check"
    build = subprocess.run(["g++", "-O2", "-march=native", "-std=c++20", f"-I{CSRC}",
                            os.path.join(HERE, "native", "div_x8_check.cpp"), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stdout + run.stderr
