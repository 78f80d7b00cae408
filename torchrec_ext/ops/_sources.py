"""The native sources, listed once for setup.py (which loads this file by path, before
the package can be imported), the JIT build and the stale-build check. Stdlib only."""

from __future__ import annotations

import glob
import hashlib
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds torchrec_ext/


def _rel(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "torchrec_ext", "csrc", pattern)))


def cpu_sources() -> list[str]:
    """ops.cpp (the schemas) and the CPU kernels, relative to ROOT."""
    return _rel("ops.cpp") + _rel("cpu/*.cpp")


def cuda_sources() -> list[str]:
    return _rel("cuda/*.cu")


def headers() -> list[str]:
    return _rel("*.h") + _rel("cpu/*.h") + _rel("cuda/*.cuh")


def source_hash() -> str | None:
    """Hash of every native source, as setup.py records it; None where they are not
    shipped (an installed wheel)."""
    paths = sorted(cpu_sources() + cuda_sources() + headers())
    if not paths:
        return None
    h = hashlib.sha256()
    for path in paths:
        h.update(path.encode())
        with open(os.path.join(ROOT, path), "rb") as f:
            h.update(f.read())
    return h.hexdigest()
