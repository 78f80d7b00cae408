"""Allocating a table's state: a size no device could hold is a config error, not a crash.

A config can ask for any int64 number of rows; torch would try to allocate it and either
fail with an allocator error that names no table or, under memory overcommit, succeed and
let the process be killed later. Each table checks its state's size against its device's
memory first (ValueError naming the table), and an allocation that still fails becomes a
MemoryError naming the table, before any of the table's state has changed.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, TypeVar

import torch

T = TypeVar("T")
GIB = 2**30


def device_bytes(device: torch.device) -> Optional[int]:
    """The memory of `device` in bytes (None: unknown, or meta, which allocates nothing)."""
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return None


def check_fits(table: str, what: str, nbytes: int, device: torch.device) -> None:
    """Raises a ValueError naming `table` if `nbytes` exceed all of `device`'s memory."""
    limit = device_bytes(torch.device(device))
    if limit is not None and nbytes > limit:
        raise ValueError(f"table '{table}': its {what} would take {nbytes / GIB:.1f} GiB, more than "
                         f"the {limit / GIB:.1f} GiB of {torch.device(device).type}")


def allocate(table: str, what: str, nbytes: int, make: Callable[[], T]) -> T:
    """Runs `make` (the allocation), turning an allocator failure into a MemoryError naming
    `table`; `make` must change no state of the table before it returns."""
    try:
        return make()
    except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError is a RuntimeError
        raise MemoryError(f"table '{table}': could not allocate its {what} "
                          f"({nbytes / GIB:.2f} GiB): {e}") from e
