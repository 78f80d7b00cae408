"""Hashed tables (HashedNets element mode, ROBE-Z block mode): config, kind, collection."""

from torchrec_ext.modules.hashed.collection import HashedEmbeddingBagCollection
from torchrec_ext.modules.hashed.config import MODES, HashedEmbeddingBagConfig
from torchrec_ext.modules.hashed.kind import HashedTableKind, init_bounds, init_shard_, shard_layout
from torchrec_ext.modules.table_kind import register_table_kind

register_table_kind(HashedEmbeddingBagConfig, HashedTableKind())

__all__ = ["HashedEmbeddingBagConfig", "HashedEmbeddingBagCollection", "HashedTableKind", "MODES",
           "init_bounds", "init_shard_", "shard_layout"]
