"""Sharders, sharding strategies and planner pieces for torchrec_ext collections."""

from torchrec_ext.sharding import dynamic  # noqa: F401  (registers the dynamic tables' shard form)
from torchrec_ext.sharding.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from torchrec_ext.sharding.dynamic.sharded import ShardedDynamicEmbeddingBagCollection
from torchrec_ext.sharding.planner import make_planner, planned_bytes
from torchrec_ext.sharding.shard_forms import ShardForm, register_shard_form
from torchrec_ext.sharding.sharded_collection import ShardedExtEmbeddingBagCollection
from torchrec_ext.sharding.sharders import (
    DynamicEmbeddingBagCollectionSharder,
    ExtEmbeddingBagCollectionSharder,
    HashedEmbeddingBagCollectionSharder,
    QREmbeddingBagCollectionSharder,
    RowWiseCpuEmbeddingBagCollectionSharder,
    get_sharders,
)

__all__ = [
    "get_sharders",
    "make_planner",
    "planned_bytes",
    "ExtEmbeddingBagCollectionSharder",
    "HashedEmbeddingBagCollectionSharder",
    "QREmbeddingBagCollectionSharder",
    "DynamicEmbeddingBagCollectionSharder",
    "RowWiseCpuEmbeddingBagCollectionSharder",
    "ShardedExtEmbeddingBagCollection",
    "ShardedDynamicEmbeddingBagCollection",
    "ShardForm",
    "register_shard_form",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "verify_checkpoint",
    "CheckpointError",
]
