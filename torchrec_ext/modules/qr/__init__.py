"""QR / compositional tables: config, kind, collection."""

from torchrec_ext.modules.qr.collection import QREmbeddingBagCollection
from torchrec_ext.modules.qr.config import MAX_PARTITIONS, PARTITIONS, Partition, QREmbeddingBagConfig
from torchrec_ext.modules.qr.kind import QRTableKind, init_bounds, partition_seed, shard_layout
from torchrec_ext.modules.table_kind import register_table_kind

register_table_kind(QREmbeddingBagConfig, QRTableKind())

__all__ = ["QREmbeddingBagConfig", "QREmbeddingBagCollection", "QRTableKind", "Partition", "PARTITIONS",
           "MAX_PARTITIONS", "init_bounds", "partition_seed", "shard_layout"]
