"""Loads the native library that registers torchrec_ext's ops.

`pip install` (setup.py) builds the CPU ops once per ISA level into
`torchrec_ext/_C_{default,avx2,avx512}` and, with CUDA, `torchrec_ext/_C_cuda`; this
module loads the CPU library that torch's own capability check picks for this CPU
(`torch.backends.cpu.get_cpu_capability()`, which honours ATEN_CPU_CAPABILITY) and the
CUDA one when present. Nothing compiles at import.

For development, TORCHREC_EXT_JIT=1 builds the sources with `cpp_extension.load`
instead (cached under torchrec_ext/_build), which is how one iterates on a kernel
without rerunning setup.py.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from importlib.machinery import EXTENSION_SUFFIXES

import torch

from torchrec_ext.ops import _sources

logger = logging.getLogger(__name__)

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_lock = threading.Lock()
_loaded: str | None = None

# Best first: the libraries a CPU of each capability can run.
_RUNNABLE = {"AVX512": ["avx512", "avx2", "default"], "AVX2": ["avx2", "default"]}


class NativeBuildError(RuntimeError):
    """The compiled ops are missing or were built for another torch."""


def _library(name: str) -> str | None:
    for suffix in EXTENSION_SUFFIXES:
        path = os.path.join(_PKG, f"_C_{name}{suffix}")
        if os.path.exists(path):
            return path
    return None


def cpu_isa() -> str:
    """The CPU library this process loads (or would load): default, avx2 or avx512."""
    for name in _RUNNABLE.get(torch.backends.cpu.get_cpu_capability(), ["default"]):
        if _library(name) is not None:
            return name
    return "default"


def _manifest() -> dict:
    try:
        with open(os.path.join(_PKG, "_native_build.json")) as f:
            return json.load(f)
    except OSError:
        return {}


def _check_manifest(manifest: dict) -> None:
    built = manifest.get("torch", "")
    if built.split(".")[:2] != torch.__version__.split(".")[:2]:
        raise NativeBuildError(
            f"torchrec_ext's ops were built against torch {built or '(unknown)'}, but torch "
            f"{torch.__version__} is installed: reinstall torchrec_ext for this torch "
            "(pip install --no-build-isolation .)."
        )
    current = _sources.source_hash()
    if current is not None and manifest.get("source_hash") != current:
        warnings.warn(
            "torchrec_ext's native sources changed since they were built; the ops loaded are "
            "the old ones. Rebuild with scripts/build_native.sh (or set TORCHREC_EXT_JIT=1).",
            stacklevel=3,
        )


def _load_prebuilt() -> str:
    name = cpu_isa()
    path = _library(name)
    if path is None:
        raise NativeBuildError(
            "torchrec_ext's native ops are not built. Install the package "
            "(pip install --no-build-isolation .), or in a checkout run scripts/build_native.sh "
            "(or set TORCHREC_EXT_JIT=1 to compile them at import)."
        )
    _check_manifest(_manifest())
    torch.ops.load_library(path)
    cuda = _library("cuda")
    if cuda is not None and torch.version.cuda is not None:
        torch.ops.load_library(cuda)
    logger.debug("loaded %s%s", path, f" and {cuda}" if cuda else "")
    return name


def _load_jit() -> str:
    from torch.utils.cpp_extension import CUDA_HOME
    from torch.utils.cpp_extension import load as load_ext

    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    srcs = _sources.cpu_sources() + (_sources.cuda_sources() if with_cuda else [])
    srcs = [os.path.join(_sources.ROOT, p) for p in srcs]
    tag = f"{'cuda' if with_cuda else 'cpu'}-torch{torch.__version__.replace('+', '_')}-native"
    build = os.path.join(_PKG, "_build", tag)
    os.makedirs(build, exist_ok=True)
    load_ext(
        name="torchrec_ext_C",
        sources=srcs,
        build_directory=build,
        extra_cflags=["-O3", "-march=native", "-fopenmp", "-std=c++20"],
        extra_ldflags=["-fopenmp"],
        extra_cuda_cflags=["-O3", "-std=c++20"],
        is_python_module=False,
    )
    return "native"


def load() -> str:
    """Registers the torchrec_ext ops with torch (idempotent, thread-safe).

    Returns:
        The CPU library loaded: "default", "avx2", "avx512", "native" (JIT build), or
        "preloaded" (the ops were registered before: `torch.ops.load_library` by hand).
    """
    global _loaded
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None:
            if _registered():  # a library loaded by hand (scripts/sanitize.sh's build)
                _loaded = "preloaded"
            elif os.environ.get("TORCHREC_EXT_JIT") == "1":
                _loaded = _load_jit()
            else:
                _loaded = _load_prebuilt()
    return _loaded


def _registered() -> bool:
    """Whether some library already registered torchrec_ext's ops in this process."""
    return any(n.startswith("torchrec_ext::") for n in torch._C._dispatch_get_all_op_names())
