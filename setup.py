"""Ahead-of-time build of torchrec_ext's native ops.

The CPU sources build once per x86-64 ISA level (baseline, AVX2, AVX-512), each into
its own library; at import, torchrec_ext/ops/_native.py loads the one this CPU runs
best (torch's own CPU capability check picks it). The CUDA sources build into one more
library when this torch has CUDA and a CUDA toolkit is found. Build with
`pip install --no-build-isolation .` (or `python setup.py build_ext --inplace` in a
checkout); importing the package then compiles nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_sources():
    """torchrec_ext/ops/_sources.py, by path: the package itself cannot be imported yet."""
    spec = importlib.util.spec_from_file_location("_torchrec_ext_sources", os.path.join(HERE, "torchrec_ext", "ops", "_sources.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCES = _load_sources()
cpu_sources, cuda_sources, headers, source_hash = (SOURCES.cpu_sources, SOURCES.cuda_sources, SOURCES.headers,
                                                   SOURCES.source_hash)

# (library suffix, -march): the names match torch.backends.cpu.get_cpu_capability().
X86_ISAS = [("default", None), ("avx2", "x86-64-v3"), ("avx512", "x86-64-v4")]


def isas() -> list[tuple[str, str | None]]:
    return X86_ISAS if platform.machine() in ("x86_64", "AMD64") else [("default", None)]


def with_cuda() -> bool:
    return torch.version.cuda is not None and CUDA_HOME is not None


def extensions():
    exts = []
    for isa, march in isas():
        cflags = ["-O3", "-std=c++20", "-fopenmp"] + ([f"-march={march}"] if march else [])
        exts.append(
            CppExtension(
                name=f"torchrec_ext._C_{isa}",
                sources=cpu_sources(),
                depends=headers(),
                extra_compile_args={"cxx": cflags},
                extra_link_args=["-fopenmp"],
            )
        )
    if with_cuda():
        exts.append(
            CUDAExtension(
                name="torchrec_ext._C_cuda",
                sources=cuda_sources(),
                depends=headers(),
                extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": ["-O3", "-std=c++20"]},
            )
        )
    return exts


class BuildNative(BuildExtension):
    """BuildExtension with one build directory per library (the ISA builds compile the
    same sources with different flags, so they must not share object files), and a
    manifest of what was built for _native.py to check at load."""

    def build_extension(self, ext):
        base = self.build_temp
        self.build_temp = os.path.join(base, ext.name.rsplit(".", 1)[-1])
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = base

    def run(self):
        super().run()
        manifest = {
            "torch": torch.__version__,
            "cuda": with_cuda(),
            "isas": [isa for isa, _ in isas()],
            "source_hash": source_hash(),
        }
        for root in {os.path.dirname(self.get_ext_fullpath(ext.name)) for ext in self.extensions}:
            with open(os.path.join(root, "_native_build.json"), "w") as f:
                json.dump(manifest, f, indent=1)


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildNative.with_options(use_ninja=True)},
)
