"""The sharded form of dynamic tables: local shards, batched lookups, row-wise routing by
key hash, and the sharded collection (state by key bucket)."""

from torchrec_ext.sharding.dynamic.batch import DynamicTableBatch
from torchrec_ext.sharding.dynamic.hash_rw import ExtDynamicRwPooledEmbeddingSharding, HashRwSparseFeaturesDist
from torchrec_ext.sharding.dynamic.local_shard import DynamicLocalShard
from torchrec_ext.sharding.dynamic.sharded import ShardedDynamicEmbeddingBagCollection

__all__ = ["DynamicLocalShard", "DynamicTableBatch", "ExtDynamicRwPooledEmbeddingSharding", "HashRwSparseFeaturesDist",
           "ShardedDynamicEmbeddingBagCollection"]
