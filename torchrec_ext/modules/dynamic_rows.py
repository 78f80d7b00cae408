"""`DynamicRows`: the rows of one dynamic table (or of one shard of it).

A `HashTable` maps keys to row numbers; the rows live in blocks of `block_size` rows,
added as the table grows, so no row ever moves. A new row gets its initial values from
(key, global column) alone (see torchrec_ext.initializers), which makes a table the same
function of its ids under every plan. `KeyedRows` is how rows travel in a state dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from torchrec_ext.initializers import Initializer
from torchrec_ext.modules.hash_table import HashTable
from torchrec_ext.ops import dynamic as dyn_ops

_ops = torch.ops.torchrec_ext


@dataclass
class KeyedRows:
    """Rows of a dynamic table as a state-dict value: keys [n] (sorted) and values [n, dim].

    Not a tensor, so torch.distributed.checkpoint stores it as one object per entry."""

    keys: torch.Tensor
    values: torch.Tensor

    def __len__(self) -> int:
        return int(self.keys.numel())


def bucket_of(keys: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Checkpoint / routing bucket of each key (a fixed function of the key)."""
    return dyn_ops.key_hash(keys) % num_buckets


class DynamicRows:
    def __init__(self, name: str, dim: int, dtype: torch.dtype, device: torch.device,
                 block_size: int, initial_capacity: int, max_capacity: Optional[int],
                 initializer: Initializer, seed: int, col_offset: int = 0,
                 trainable_blocks: bool = False) -> None:
        self.name, self.dim, self.dtype, self.device = name, dim, dtype, torch.device(device)
        self.block_size, self.initializer, self.seed = block_size, initializer, seed
        self.col_offset = col_offset
        self.initial_capacity = initial_capacity
        self.trainable_blocks = trainable_blocks
        self.table = HashTable(name, initial_capacity, max_capacity, self.device)
        self.blocks: List[torch.Tensor] = []
        self._cover(max(initial_capacity, 1))  # kernels need one block, even for no rows

    @property
    def missing_value(self) -> float:
        return float(self.initializer.eval_value)

    def __len__(self) -> int:
        return len(self.table)

    def _cover(self, rows: int) -> None:
        """Adds blocks until rows [0, rows) exist."""
        while len(self.blocks) * self.block_size < rows:
            b = torch.zeros(self.block_size, self.dim, dtype=self.dtype, device=self.device)
            if self.trainable_blocks:
                b = torch.nn.Parameter(b)
            self.blocks.append(b)

    def lookup(self, keys: torch.Tensor, insert: bool) -> torch.Tensor:
        """Row of each key; with insert, absent keys get a new, initialised row; without, -1."""
        if self.device.type == "meta":  # shape-only (planning, tracing): no table to consult
            return torch.zeros_like(keys, dtype=torch.long)
        if not insert:
            return self.table.find(keys)
        rows, inserted = self.table.find_or_insert(keys)
        if bool(inserted.any()):
            self._cover(self.table.rows_in_use_bound)
            self._init_rows(rows[inserted], keys.long()[inserted])
        return rows

    def _init_rows(self, rows: torch.Tensor, keys: torch.Tensor) -> None:
        kind, a, b = self.initializer.native()
        with torch.no_grad():
            _ops.block_rows_init_(self._raw_blocks(), rows, keys, kind, a, b, self.seed, self.col_offset)

    def _raw_blocks(self) -> List[torch.Tensor]:
        return [b.data if isinstance(b, torch.nn.Parameter) else b for b in self.blocks]

    def pool(self, rows, offsets, per_sample_weights, pooling: int) -> torch.Tensor:
        return dyn_ops.dynamic_bag(self.blocks, rows, offsets, per_sample_weights, pooling, self.missing_value)

    def pool_detached(self, rows, offsets, per_sample_weights, pooling: int) -> torch.Tensor:
        return _ops.dynamic_bag_forward(self._raw_blocks(), rows, offsets, per_sample_weights,
                                        pooling, self.missing_value)

    def backward(self, grad_output, rows, offsets, per_sample_weights, pooling: int, psw_grad: bool):
        """(unique rows, their gradients, per-sample-weight gradient or empty)."""
        return _ops.dynamic_bag_backward(grad_output, self._raw_blocks(), rows, offsets,
                                         per_sample_weights, pooling, self.missing_value, psw_grad)

    @torch.no_grad()
    def add_to_rows(self, rows: torch.Tensor, delta: torch.Tensor, alpha: float) -> None:
        """rows += alpha * delta (rows distinct)."""
        if rows.numel():
            _ops.block_rows_scatter_(self._raw_blocks(), rows, delta, alpha, True)

    def values(self, rows: torch.Tensor) -> torch.Tensor:
        """Float32 values of the given rows."""
        if rows.numel() == 0:
            return torch.empty(0, self.dim, device=self.device)
        return _ops.block_rows_gather(self._raw_blocks(), rows)

    def export(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(keys sorted, float32 values) of every row held."""
        keys, rows = self.table.export()
        return keys, self.values(rows)

    def keys(self) -> torch.Tensor:
        return self.table.export()[0]

    @torch.no_grad()
    def load(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Inserts (or overwrites) the given rows with the given values."""
        if values.dim() != 2 or values.shape[1] != self.dim or values.shape[0] != keys.numel():
            raise ValueError(f"table '{self.name}': cannot load {tuple(values.shape)} values for "
                             f"{keys.numel()} keys into rows of dim {self.dim}")
        if keys.numel() == 0:
            return
        rows, _ = self.table.find_or_insert(keys.to(self.device))
        self._cover(self.table.rows_in_use_bound)
        _ops.block_rows_scatter_(self._raw_blocks(), rows, values.to(self.device, torch.float32), 1.0, False)

    def clear(self) -> None:
        self.table.clear(self.initial_capacity)
