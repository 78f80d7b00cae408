"""Atomic, verified DCP checkpoints: a checkpoint directory is complete, or it is ignored.

`save_checkpoint` writes `torch.distributed.checkpoint` files into `<root>/step_<N>.partial`;
once every rank has written (DCP's metadata included), the ranks hash the files (each its
share), rank 0 records each file's size and CRC32 in `manifest.json` and renames the
directory to `<root>/step_<N>`. A rename within one filesystem is atomic, so a process
killed at any moment leaves the earlier checkpoints as they were plus, at worst, a
`.partial` directory that `latest_checkpoint` skips and the next save removes.
`load_checkpoint` checks the manifest first (the ranks split the files again) and raises
`CheckpointError` naming a missing, truncated or altered file instead of loading it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zlib
from typing import Any, Dict, List, Optional

import torch.distributed as dist

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PARTIAL = ".partial"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that is incomplete or damaged: nothing was loaded from it."""


def checkpoint_path(root: str, step: int) -> str:
    return os.path.join(root, f"step_{step:08d}")


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _crc32(path: str, chunk: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return crc
            crc = zlib.crc32(b, crc)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mine(names, rank: int, world: int) -> List[str]:
    """This rank's share of the files whose CRC32s a save or a check computes."""
    return sorted(names)[rank::world]


def _all_gather(value, world: int) -> list:
    if world == 1:
        return [value]
    out: list = [None] * world
    dist.all_gather_object(out, value)
    return out


def _seal(path: str, step: int, rank: int, world: int) -> None:
    """Every rank hashes its share of the files; rank 0 writes the manifest."""
    names = [n for n in os.listdir(path) if n != MANIFEST and os.path.isfile(os.path.join(path, n))]
    crcs = {n: _crc32(os.path.join(path, n)) for n in _mine(names, rank, world)}
    merged = {n: c for part in _all_gather(crcs, world) for n, c in part.items()}
    if rank != 0:
        return
    files = {n: {"bytes": os.path.getsize(os.path.join(path, n)), "crc32": merged[n]} for n in sorted(names)}
    tmp = os.path.join(path, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, MANIFEST))


def complete_checkpoints(root: str) -> List[str]:
    """The committed checkpoints under root (a `step_<N>` directory with a manifest), oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        if m and os.path.isfile(os.path.join(root, name, MANIFEST)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str) -> Optional[str]:
    """The newest complete checkpoint under root, or None; partial directories are skipped."""
    done = complete_checkpoints(root)
    return done[-1] if done else None


def save_checkpoint(state_dict: Dict[str, Any], root: str, step: int, keep: Optional[int] = None) -> str:
    """Saves state_dict (collectively, on every rank of the default group) as `<root>/step_<step>`
    and returns its path; keeps only the newest `keep` complete checkpoints if given."""
    import torch.distributed.checkpoint as dcp

    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    rank, world = _world()
    final = checkpoint_path(root, step)
    partial = final + PARTIAL
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # left by a run killed mid-save
    _barrier(world)
    dcp.save(state_dict, checkpoint_id=partial)
    _barrier(world)  # every rank's files are written before they are hashed
    _seal(partial, step, rank, world)
    if rank == 0:
        if os.path.exists(final):  # the same step saved again (a resumed run): replace it
            shutil.rmtree(final)
        os.rename(partial, final)
        _fsync_dir(root)
        if keep is not None:
            for old in complete_checkpoints(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        for name in os.listdir(root):  # partial saves of other steps: never completed
            if name.endswith(PARTIAL):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        logger.info("checkpoint %s committed", final)
    _barrier(world)
    return final


def _problems(path: str, files: Dict[str, dict], crc_names: set) -> List[str]:
    out = []
    for name in sorted(files):
        full = os.path.join(path, name)
        want = files[name]
        if not os.path.isfile(full):
            out.append(f"{name} is missing")
            continue
        size = os.path.getsize(full)
        if size != want["bytes"]:
            out.append(f"{name} holds {size} bytes, the manifest {want['bytes']} (truncated or rewritten)")
        elif name in crc_names and _crc32(full) != want["crc32"]:
            out.append(f"{name} does not match its CRC32 (altered after the save)")
    return out


def verify_checkpoint(path: str, checksums: bool = True) -> int:
    """Checks every file the manifest lists (sizes, and CRC32s split over the ranks when a
    group is up; collective then); returns the checkpoint's step or raises CheckpointError."""
    rank, world = _world()
    manifest = os.path.join(path, MANIFEST)
    problems: List[str] = []
    files: Dict[str, dict] = {}
    step = -1
    if not os.path.isdir(path):
        problems.append("the directory does not exist")
    elif not os.path.isfile(manifest):
        problems.append(f"{MANIFEST} is missing: the save never completed")
    else:
        try:
            with open(manifest) as f:
                m = json.load(f)
            files, step = m["files"], int(m["step"])
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"{MANIFEST} is unreadable ({e})")
    if files:
        # sizes are cheap: every rank checks them all; the CRCs are split over the ranks
        problems += _problems(path, files, set(_mine(files, rank, world)) if checksums else set())
    problems = sorted({p for part in _all_gather(problems, world) for p in part})
    if problems:
        raise CheckpointError(f"checkpoint {path} is damaged: " + "; ".join(problems))
    return step


def load_checkpoint(state_dict: Dict[str, Any], path: str, checksums: bool = True) -> str:
    """Loads into state_dict (in place, collectively) from `path`: a checkpoint, or a root of
    `step_<N>` checkpoints (the newest complete one). Verifies it first; returns its path."""
    import torch.distributed.checkpoint as dcp

    named = _STEP_DIR.match(os.path.basename(os.path.normpath(path)))
    if not named and not any(os.path.isfile(os.path.join(path, f)) for f in (MANIFEST, ".metadata")):
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no complete checkpoint under {path}")
        path = latest
    verify_checkpoint(path, checksums)
    dcp.load(state_dict, checkpoint_id=path)
    return path
