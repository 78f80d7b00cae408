"""`DynamicTableKind`: what the planner and the sharders need of a dynamic table.

A dynamic table has no fixed-shape state: its rows are created as ids arrive. The planner
sees a [num_embeddings, dim] view (num_embeddings: the expected rows) and charges a shard
for the table's capacity. Row-wise plans route keys to ranks by key hash, not by range.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torchrec.distributed.types import ShardingType

from torchrec_ext.modules import row_optim
from torchrec_ext.modules.dynamic.config import DynamicEmbeddingBagConfig
from torchrec_ext.modules.dynamic.rows import DynamicRows
from torchrec_ext.modules.table_kind import TableKind

# Index and bookkeeping bytes per row: two int64 index slots per key (the index stays at
# most half full) plus a free-list entry.
KEY_OVERHEAD_BYTES = 2 * 16 + 8

_SHARDINGS = (ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value, ShardingType.COLUMN_WISE.value)


def planned_rows(cfg: DynamicEmbeddingBagConfig) -> int:
    """Rows the planner charges: max_capacity, else the larger of the hint and initial_capacity."""
    if cfg.max_capacity is not None:
        return cfg.max_capacity
    return max(cfg.num_embeddings, cfg.initial_capacity)


def new_rows(cfg: DynamicEmbeddingBagConfig, device, col_offset: int = 0, cols: Optional[int] = None,
             trainable_blocks: bool = False, capacity_share: float = 1.0) -> DynamicRows:
    """Rows of a shard holding `cols` columns from `col_offset` and `capacity_share` of the
    table's keys (a row-wise shard: 1 / world size of its capacities)."""
    cols = cfg.embedding_dim if cols is None else cols
    initial = int(round(cfg.initial_capacity * capacity_share))
    cap = None if cfg.max_capacity is None else math.ceil(cfg.max_capacity * capacity_share)
    return DynamicRows(cfg.name, cols, cfg.storage_dtype, device, cfg.block_size, initial, cap, cfg.initializer,
                       cfg.seed, col_offset, trainable_blocks, cfg.admission, cfg.eviction, cfg.eviction_interval,
                       cfg.on_full, cfg.delta_window)


class DynamicTableKind(TableKind):
    """Rows behind a hash index; table-wise, row-wise (by key hash) or column-wise."""

    fixed_size = False
    optimizers = frozenset({row_optim.SGD, row_optim.ADAGRAD, row_optim.ROWWISE_ADAGRAD, row_optim.ADAM})

    def kernel_group(self, config) -> Optional[str]:
        return "<dynamic tables>"

    def parameter_shape(self, config):
        return (max(config.num_embeddings, 1), config.embedding_dim)

    def parameter_dtype(self, config) -> torch.dtype:
        return config.storage_dtype

    def id_bounds(self, config):
        return (None, None)

    def rw_id_space(self, config, block_rows, world_size):
        return self.parameter_shape(config)[0]  # unused: row-wise routes keys by hash

    def unsupported_sharding(self, config, sharding_type):
        if sharding_type not in _SHARDINGS:
            return f"dynamic tables shard table-wise, row-wise or column-wise, not {sharding_type}"
        return None

    def storage_bytes(self, config, sharding_type, offsets, sizes, optimizer):
        """A shard at capacity: rows x (its columns x dtype + per-row optimizer state) plus
        the index; a row-wise shard holds its share of the rows."""
        elem = torch.empty(0, dtype=config.storage_dtype).element_size()
        share = sizes[0] / self.parameter_shape(config)[0] if sharding_type == ShardingType.ROW_WISE.value else 1.0
        rows = int(round(planned_rows(config) * share))
        state = 4 * sum(row_optim.state_widths(optimizer, sizes[1]).values()) if optimizer else 0
        return rows * (sizes[1] * elem + state + KEY_OVERHEAD_BYTES)
