"""Sharders, sharding strategies and planner pieces for torchrec_ext collections."""

from torchrec_ext.sharding.planner import make_planner, planned_bytes  # noqa: F401
from torchrec_ext.sharding.sharders import (  # noqa: F401
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
    "HashedEmbeddingBagCollectionSharder",
    "QREmbeddingBagCollectionSharder",
    "DynamicEmbeddingBagCollectionSharder",
]
