"""Runs scenario functions in one spawned gloo world and collects per-scenario results.

Spawning a world (torch + torchrec imports in every process) dominates the cost of a
multi-process test, so each world size is spawned once and runs every scenario in turn.
A scenario returns nothing or raises; each rank records its outcome in a JSON file.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import socket
import traceback
from typing import Dict, List

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, module: str, names: List[str], out_dir: str, extra: dict):
    import importlib

    import torch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=int(os.environ.get("TORCHREC_EXT_DIST_TIMEOUT", "120"))))
    scenarios = importlib.import_module(module)
    results: Dict[str, str] = {}
    for name in names:
        try:
            getattr(scenarios, name)(rank, world_size, **extra)
            results[name] = "ok"
        except Exception:  # recorded, reported by the test that owns the scenario
            results[name] = traceback.format_exc()
        # written after every scenario, so a hang later still reports what ran
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.barrier()
    gc.collect()  # modules in reference cycles hold the group: free them before it goes
    dist.destroy_process_group()


def run_world(world_size: int, module: str, names: List[str], out_dir: str, **extra) -> Dict[str, str]:
    """Returns scenario -> "ok" or the first failing rank's traceback."""
    os.makedirs(out_dir, exist_ok=True)
    crash = None
    try:
        mp.spawn(_worker, args=(world_size, free_port(), module, names, out_dir, extra),
                 nprocs=world_size, join=True)
    except Exception as e:  # a rank died or a collective timed out
        crash = f"world of {world_size} failed: {e}"
    merged: Dict[str, str] = {}
    for r in range(world_size):
        path = os.path.join(out_dir, f"rank{r}.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for name, outcome in json.load(f).items():
                if merged.get(name, "ok") == "ok":
                    merged[name] = outcome if outcome == "ok" else f"rank {r}:\n{outcome}"
    for name in names:
        merged.setdefault(name, crash or "did not run")
    return merged
