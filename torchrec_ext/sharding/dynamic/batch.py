"""Table batching for dynamic tables: the dynamic shards of a lookup kernel (one storage
dtype) look up their ids in one native call (`hash_index_lookup_`, which also stamps the
rows it finds), pool in one call (`dynamic_bags_forward`) and, in the backward pass,
update in one call: with SGD inside the backward kernel (`dynamic_bags_sgd_`), else from
the touched rows' gradients of one `dynamic_bags_backward` call (modules/dynamic/fused_update.py).
Only a table with unseen ids takes a per-table step (admission, insertion, initial values).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from torchrec_ext.modules.dynamic.kind import DynamicTableKind
from torchrec_ext.modules.dynamic.rows import lookup_batch
from torchrec_ext.ops import dynamic as dyn_ops
from torchrec_ext.sharding.dynamic.local_shard import DynamicLocalShard, dynamic_fused_optimizer
from torchrec_ext.sharding.shard_forms import ShardForm, register_shard_form, shard_bags


class DynamicTableBatch:
    """DynamicLocalShards served together; `forward` takes their features' values and
    offsets laid end to end (shard by shard, as a KJT holds them). Not a module: the
    kernel owns the shards."""

    def __init__(self, shards: Sequence[nn.Module]):
        self.shards = list(shards)
        self.stores = [s.rows for s in self.shards]
        self.poolings = [s.pooling for s in self.shards]
        self.num_features = sum(s.num_features for s in self.shards)

    def forward(self, values, offsets, psw, batch: int, fused: bool) -> List[torch.Tensor]:
        table_bags = shard_bags(self.shards, batch)
        key_ends = offsets[table_bags].tolist()
        training = self.shards[0].training
        rows, looked = lookup_batch(self.stores, values, key_ends, insert=training,
                                    steps=[s.steps for s in self.shards])
        if training:
            for s in self.shards:
                s.steps += 1
        if fused:
            optimizer = self.shards[0].optimizer
            return optimizer.lookup_batch([s.optim_key for s in self.shards], looked, rows, offsets, psw,
                                          table_bags, self.poolings)
        return dyn_ops.dynamic_bags([lk.blocks for lk in looked], rows, offsets, psw, table_bags, self.poolings,
                                    [s.missing_value for s in self.stores])


register_shard_form(DynamicTableKind, ShardForm(
    local_shard=DynamicLocalShard,
    batch_key=lambda shard: shard.rows.dtype,  # one call reads one storage dtype
    batch=DynamicTableBatch,
    fused_optimizer=dynamic_fused_optimizer,
))
