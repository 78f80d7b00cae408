"""Builds (once, cached) and loads the native library that registers torchrec_ext's ops.

The C++ sources always build; the CUDA sources are added when this torch has CUDA and
a CUDA toolkit is present. Ninja rebuilds only what changed, so importing is cheap
after the first build. Set TORCHREC_EXT_BUILD_DIR to move the cache.
"""

from __future__ import annotations

import glob
import os
import threading

import torch

_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
_lock = threading.Lock()
_loaded = False


def _with_cuda() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


def _cpu_tag() -> str:
    """The build uses -march=native, so a cached build belongs to one kind of CPU."""
    import hashlib
    import platform

    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return hashlib.sha1((platform.machine() + flags).encode()).hexdigest()[:8]


def _march() -> str:
    """The CPU the build targets: this one, or TORCHREC_EXT_MARCH (e.g. x86-64-v3, to
    build and test the code paths of CPUs without AVX-512)."""
    return os.environ.get("TORCHREC_EXT_MARCH", "native")


def build_dir() -> str:
    default = os.path.join(os.path.dirname(_CSRC), "_build")
    flavour = "cuda" if _with_cuda() else "cpu"
    tag = f"{flavour}-torch{torch.__version__.replace('+', '_')}-{_cpu_tag()}"
    if _march() != "native":
        tag += f"-{_march()}"
    path = os.path.join(os.environ.get("TORCHREC_EXT_BUILD_DIR", default), tag)
    os.makedirs(path, exist_ok=True)
    return path


def sources() -> list[str]:
    srcs = [os.path.join(_CSRC, "ops.cpp")] + sorted(glob.glob(os.path.join(_CSRC, "cpu", "*.cpp")))
    if _with_cuda():
        srcs += sorted(glob.glob(os.path.join(_CSRC, "cuda", "*.cu")))
    return srcs


def load() -> None:
    """Registers the torchrec_ext ops with torch (idempotent, thread-safe)."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        from torch.utils.cpp_extension import load as load_ext

        load_ext(
            name="torchrec_ext_C",
            sources=sources(),
            build_directory=build_dir(),
            extra_cflags=["-O3", f"-march={_march()}", "-fopenmp", "-std=c++20"],
            extra_ldflags=["-fopenmp"],
            extra_cuda_cflags=["-O3", "-std=c++20"],
            is_python_module=False,
            verbose=os.environ.get("TORCHREC_EXT_VERBOSE_BUILD") == "1",
        )
        _loaded = True
