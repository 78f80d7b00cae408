"""A rank's shard of a dynamic table inside a torchrec_ext lookup kernel.

Table-wise and column-wise shards hold every key of the table (column shards: their
columns; they see the same ids, so they insert the same keys); a row-wise shard holds the
keys routed to its rank by `HashRwSparseFeaturesDist`. Initial values depend on the key
and the global column only, so every plan holds the same rows.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn
from torchrec.distributed.embedding_types import ShardedEmbeddingTable
from torchrec.distributed.types import ShardingType

from torchrec_ext.modules.dynamic.fused_update import DynamicFusedUpdate
from torchrec_ext.modules.dynamic.kind import new_rows
from torchrec_ext.modules.dynamic.shared import shared_rows


class DynamicLocalShard(nn.Module):
    def __init__(self, table: ShardedEmbeddingTable, config, pooling: int, device: torch.device,
                 sharding_type: Optional[ShardingType]) -> None:
        super().__init__()
        self.config = config
        self.table_name = table.name
        self.metadata = table.local_metadata
        self.num_features = table.num_features()
        self.pooling = pooling
        self.weights, self.pieces = nn.ParameterList(), []  # no fixed-shape state
        col_offset = int(self.metadata.shard_offsets[1]) if self.metadata is not None else 0
        cols = table.local_cols
        row_wise = sharding_type == ShardingType.ROW_WISE
        world_size = len(table.global_metadata.shards_metadata) if table.global_metadata is not None else 1
        share = 1.0 / world_size if row_wise else 1.0
        rank = int(self.metadata.placement.rank()) if (row_wise and self.metadata is not None) else -1

        signature = ("sharded", str(sharding_type), rank, col_offset, cols, str(device))
        # a row-wise rank holds its share of the table's keys, and of its capacities
        self.rows = shared_rows(config, signature, lambda: new_rows(
            config, device, col_offset=col_offset, cols=cols, capacity_share=share))
        self.optimizer = None  # a DynamicFusedUpdate, set by the kernel
        self.optim_key = ""
        self.steps = 0  # training lookups so far: the step stamped on rows

    def reset_parameters(self) -> None:
        self.rows.clear()
        self.steps = 0


def dynamic_fused_optimizer(shards: Sequence[DynamicLocalShard], fused_params: Mapping[str, Any],
                            where: str) -> DynamicFusedUpdate:
    """One in-backward optimizer over the rows of the kernel's dynamic shards."""
    for s in shards:
        s.optim_key = f"{s.table_name}.rows"
        while any(o is not s and o.optim_key == s.optim_key for o in shards):
            s.optim_key += "_cw"  # several column shards of one table on this rank
    optim = DynamicFusedUpdate({s.optim_key: s.rows for s in shards}, fused_params, where,
                               reduce_by={s.optim_key: s.config.grad_reduce_by for s in shards})
    for s in shards:
        s.optimizer = optim
    return optim
