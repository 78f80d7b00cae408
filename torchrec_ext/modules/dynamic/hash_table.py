"""`HashTable`: int64 key -> row index, the index half of a dynamic embedding table.

The native ops (csrc/cpu/hash_index.cpp, csrc/cuda/hash_index.cu) do the batch work in
parallel with compare-and-swap slot claims; this class owns the index arrays, hands out
rows (reusing erased ones first), grows the index before it is half full (only keys and
row numbers move on growth, never embedding rows), and enforces `max_rows`. One lock
makes every batch operation atomic with respect to the others, so threads may share a
table. Every int64 is a valid key: slot states live in the row array, not in reserved keys.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator, Optional, Tuple

import torch

from torchrec_ext.modules.state_memory import allocate, check_fits
from torchrec_ext.ops import dynamic as _dynamic  # noqa: F401  (registers the ops)

_ops = torch.ops.torchrec_ext
logger = logging.getLogger(__name__)
_EMPTY = -1
_MIN_SLOTS = 16


class TableFullError(RuntimeError):
    """A batch needs more rows than the table's `max_rows` allows; nothing was inserted."""


def _slots_for(rows: int) -> int:
    """Power-of-two slot count that keeps `rows` keys at most half the slots."""
    n = _MIN_SLOTS
    while n < 2 * rows:
        n *= 2
    return n


class HashTable:
    """The native int64 -> row index of a dynamic table (open addressing, at most half full).

    Args:
        name: the table's name (error messages and logs name it).
        initial_rows: rows the index is sized for up front.
        max_rows: the most keys it holds; an insert beyond raises `TableFullError` and
            inserts nothing. None: unbounded.
        device: where the index lives (CPU or CUDA).

    Example:
        >>> t = HashTable("t")
        >>> rows, created = t.find_or_insert(torch.tensor([7, -(2**63), 7]))
        >>> len(t), created.tolist()
        (2, [True, True, False])
    """

    def __init__(self, name: str, initial_rows: int = 0, max_rows: Optional[int] = None,
                 device: Optional[torch.device] = None) -> None:
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"table '{name}': max_rows must be positive, got {max_rows}")
        self.name = name
        self.max_rows = max_rows
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._lock = threading.Lock()
        self.clear(initial_rows)

    def clear(self, initial_rows: int = 0) -> None:
        with self._lock:
            slots = _slots_for(max(initial_rows, 1))
            check_fits(self.name, "hash index", 16 * slots, self.device)
            keys, rows = allocate(self.name, "hash index", 16 * slots, lambda: (
                torch.zeros(slots, dtype=torch.long, device=self.device),
                torch.full((slots,), _EMPTY, dtype=torch.long, device=self.device)))
            self._keys, self._rows = keys, rows
            self._size = 0
            self._erased = 0  # tombstones in the index
            self._next_row = 0  # rows ever handed out (the blocks must cover them)
            self._free = torch.empty(0, dtype=torch.long, device=self.device)

    # pickling / deepcopy: the lock is recreated
    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def size(self) -> int:
        return self._size

    @property
    def rows_in_use_bound(self) -> int:
        """Every row handed out so far is below this."""
        return self._next_row

    @property
    def slots(self) -> int:
        return self._keys.numel()

    def _check(self, keys: torch.Tensor, what: str) -> torch.Tensor:
        if not isinstance(keys, torch.Tensor) or keys.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"table '{self.name}': {what} needs int32 or int64 keys, got "
                            f"{getattr(keys, 'dtype', type(keys))}")
        return keys.reshape(-1).to(device=self.device, dtype=torch.long)

    def find(self, keys: torch.Tensor) -> torch.Tensor:
        """Row of each key, -1 where absent."""
        keys = self._check(keys, "find")
        with self._lock:
            return _ops.hash_index_find(self._keys, self._rows, keys)

    @contextlib.contextmanager
    def locked_index(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(slot_keys, slot_rows) with the table's lock held: for native calls that read
        many tables at once (hash_index_lookup_)."""
        with self._lock:
            yield self._keys, self._rows

    def find_or_insert(self, keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(row of each key, mask of the positions that created a row).

        Raises TableFullError, inserting nothing, if the new keys would exceed max_rows."""
        keys = self._check(keys, "find_or_insert")
        with self._lock:
            rows = _ops.hash_index_find(self._keys, self._rows, keys)
            missing = rows < 0
            n_miss = int(missing.sum())
            inserted = torch.zeros_like(missing)
            if n_miss == 0:
                return rows, inserted
            miss_keys = keys[missing]
            if self.max_rows is not None and self._size + n_miss > self.max_rows:
                n_new = int(torch.unique(miss_keys).numel())
                if self._size + n_new > self.max_rows:
                    msg = (f"table '{self.name}' is full: it holds {self._size} of max {self.max_rows} "
                           f"rows and this batch brings {n_new} new ids; nothing was inserted "
                           "(raise max_capacity or configure eviction)")
                    logger.warning(msg)
                    raise TableFullError(msg)
            self._reserve(n_miss)
            pool = self._row_pool(n_miss)
            used = torch.zeros(1, dtype=torch.long, device=self.device)
            new_rows, new_mask = _ops.hash_index_insert_(self._keys, self._rows, miss_keys, pool, used)
            self._take_from_pool(int(used))
            rows[missing] = new_rows
            inserted[missing] = new_mask
            return rows, inserted

    def erase(self, keys: torch.Tensor) -> torch.Tensor:
        """Erases the keys; returns the rows they freed (now reusable)."""
        keys = self._check(keys, "erase")
        with self._lock:
            freed = _ops.hash_index_erase_(self._keys, self._rows, keys)
            freed = freed[freed >= 0]
            self._size -= freed.numel()
            self._erased += freed.numel()
            self._free = torch.cat([self._free, freed])
            return freed

    def export(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(keys, rows) of every entry, ordered by key."""
        with self._lock:
            live = self._rows >= 0
            keys, rows = self._keys[live], self._rows[live]
        order = torch.argsort(keys)
        return keys[order], rows[order]

    # --- internals (called with the lock held) ---
    def _reserve(self, extra: int) -> None:
        """Grows (or cleans) the index so `extra` more keys keep it at most half full."""
        if 2 * (self._size + self._erased + extra) <= self.slots:
            return
        slots = max(self.slots, _slots_for(self._size + extra))
        if slots > self.slots:
            logger.info("table '%s': index grows to %d slots for %d keys", self.name, slots, self._size + extra)
        self._keys, self._rows = _ops.hash_index_rehash(self._keys, self._rows, slots)
        self._erased = 0

    def _row_pool(self, n: int) -> torch.Tensor:
        """n candidate rows: freed rows first (most recent first), then fresh ones."""
        k = min(n, self._free.numel())
        fresh = torch.arange(self._next_row, self._next_row + n - k, device=self.device)
        return torch.cat([self._free[self._free.numel() - k:].flip(0), fresh])

    def _take_from_pool(self, used: int) -> None:
        k = min(used, self._free.numel())
        self._free = self._free[: self._free.numel() - k]
        self._next_row += used - k
        self._size += used
