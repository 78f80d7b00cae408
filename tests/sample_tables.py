"""Small two-table collections of each kind (a feature shared by both tables, SUM and
MEAN) and a batch for them, shared by the module tests."""

import torch
from torchrec import PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext import HashedEmbeddingBagConfig, QREmbeddingBagConfig


def hashed_tables():
    return [
        HashedEmbeddingBagConfig(name="t0", num_embeddings=500, embedding_dim=8, feature_names=["a", "shared"],
                                 mode="element", compression=0.1),
        HashedEmbeddingBagConfig(name="t1", num_embeddings=300, embedding_dim=4, feature_names=["b", "shared"],
                                 pooling=PoolingType.MEAN, compression=0.2),
    ]


def qr_tables():
    return [
        QREmbeddingBagConfig(name="t0", num_embeddings=500, embedding_dim=8, feature_names=["a", "shared"],
                             num_collisions=23),
        QREmbeddingBagConfig(name="t1", num_embeddings=300, embedding_dim=4, feature_names=["b", "shared"],
                             pooling=PoolingType.MEAN, partition="crt", factors=[17, 19],
                             operation="concat", partition_dims=[1, 3]),
    ]


def kjt(values=(1, 2, 3, 4, 5, 6, 7, 8), lengths=(2, 0, 1, 1, 2, 2), keys=("a", "b", "shared")):
    return KeyedJaggedTensor.from_lengths_sync(keys=list(keys), values=torch.tensor(values, dtype=torch.long),
                                               lengths=torch.tensor(lengths))
