"""`torchrec_ext.nn`: the `nn.EmbeddingBag`- and `nn.Embedding`-style modules
(`torchrec_ext.modules.nn_bags`)."""

from torchrec_ext.modules.nn_bags import (
    DynamicEmbedding,
    DynamicEmbeddingBag,
    HashedEmbedding,
    HashedEmbeddingBag,
    QREmbedding,
    QREmbeddingBag,
)

__all__ = ["HashedEmbeddingBag", "QREmbeddingBag", "DynamicEmbeddingBag", "HashedEmbedding", "QREmbedding",
           "DynamicEmbedding"]
