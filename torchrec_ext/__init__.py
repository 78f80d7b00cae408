"""torchrec_ext: embedding tables TorchRec does not have, planned and sharded by TorchRec."""

from torchrec_ext.modules.hashed_embedding_bag import (  # noqa: F401
    HashedEmbeddingBagCollection,
    HashedEmbeddingBagConfig,
)

__all__ = ["HashedEmbeddingBagConfig", "HashedEmbeddingBagCollection"]
