"""`HashedEmbeddingBagCollection`: the drop-in EmbeddingBagCollection of hashed tables."""

from __future__ import annotations

from torchrec_ext.modules.collection_base import ExtEmbeddingBagCollection
from torchrec_ext.modules.hashed.config import HashedEmbeddingBagConfig


class HashedEmbeddingBagCollection(ExtEmbeddingBagCollection):
    """Drop-in `torchrec.EmbeddingBagCollection` whose tables are hashed buffers.

    Args:
        tables: `HashedEmbeddingBagConfig`s.
        is_weighted: the input KJT carries per-sample weights (SUM pooling only).
        device: where the buffers live ("meta" to plan and shard first).

    Returns (forward): a `KeyedTensor` with one pooled [batch, dim] per feature, keys in
    TorchRec's order.

    `embedding_bags[<table>].weight` is the buffer, [row_regions * slots, dim]. Train it
    with any torch optimizer (dense gradients of the buffer), or shard it with
    `torchrec_ext.sharding.get_sharders()` for fused optimizers.

    Example:
        >>> import torch
        >>> from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        >>> ebc = HashedEmbeddingBagCollection([HashedEmbeddingBagConfig(
        ...     name="t", num_embeddings=1000, embedding_dim=8, feature_names=["f"], compression=0.1)])
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([1, 5, 7]), torch.tensor([2, 1]))
        >>> ebc(kjt)["f"].shape
        torch.Size([2, 8])
    """

    config_type = HashedEmbeddingBagConfig
