"""`QREmbeddingBagCollection`: the drop-in EmbeddingBagCollection of QR tables."""

from __future__ import annotations

from torchrec_ext.modules.collection_base import ExtEmbeddingBagCollection
from torchrec_ext.modules.qr.config import QREmbeddingBagConfig


class QREmbeddingBagCollection(ExtEmbeddingBagCollection):
    """Drop-in `torchrec.EmbeddingBagCollection` whose tables are QR / compositional tables.

    Args:
        tables: `QREmbeddingBagConfig`s.
        is_weighted: the input KJT carries per-sample weights (SUM pooling only).
        device: where the partition tables live ("meta" to plan and shard first).

    Returns (forward): a `KeyedTensor` with one pooled [batch, dim] per feature.

    `embedding_bags[<table>].weight_<p>` is partition p's table, [rows_p, dim_p]. Train
    with any torch optimizer (dense gradients, zero outside the rows a batch touched), or
    shard with `torchrec_ext.sharding.get_sharders()` for fused optimizers.

    Example:
        >>> import torch
        >>> from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        >>> ebc = QREmbeddingBagCollection([QREmbeddingBagConfig(
        ...     name="t", num_embeddings=1000, embedding_dim=8, feature_names=["f"], num_collisions=32)])
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([1, 5, 7]), torch.tensor([2, 1]))
        >>> ebc(kjt)["f"].shape
        torch.Size([2, 8])
    """

    config_type = QREmbeddingBagConfig
