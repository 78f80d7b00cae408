"""Row-wise sharding of dynamic tables: ids routed to ranks by key hash, not by range.

TorchRec's row-wise input distribution cuts [0, num_embeddings) into contiguous blocks;
a dynamic table's ids are unbounded, so `HashRwSparseFeaturesDist` sends id x of a
feature whose table has `key_buckets` buckets to rank (hash(x) % key_buckets) % world_size.
The bucketized KJT has TorchRec's layout (keys repeated per rank, lengths per
rank x feature x sample) and values keep their global ids. Output distribution
(reduce-scatter of partial sums) and the MEAN callback stay TorchRec's own.
"""

from __future__ import annotations

from typing import List

import torch
from torchrec.distributed.sharding.rw_sharding import RwSparseFeaturesDist
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext.ops.dynamic import key_hash
from torchrec_ext.sharding.shardings import ExtRwPooledEmbeddingSharding
from torchrec_ext.sharding.table_ref import ext_table_config


def hash_bucketize(kjt: KeyedJaggedTensor, world_size: int, key_buckets: torch.Tensor) -> KeyedJaggedTensor:
    """The KJT split by owner rank: [rank][feature][sample], ids in their original order."""
    if kjt.variable_stride_per_key():
        raise ValueError("dynamic tables: variable batch size per feature is not supported")
    values, lengths, weights = kjt.values(), kjt.lengths(), kjt.weights_or_none()
    num_features, batch = len(kjt.keys()), kjt.stride()
    segments = num_features * batch
    seg = torch.repeat_interleave(torch.arange(segments, device=values.device), lengths.long())
    buckets_per_value = key_buckets.to(values.device)[seg // max(batch, 1)]
    owner = (key_hash(values.long()) % buckets_per_value) % world_size
    combined = owner * segments + seg
    order = torch.argsort(combined, stable=True)
    new_lengths = torch.bincount(combined, minlength=world_size * segments).to(lengths.dtype)
    return KeyedJaggedTensor(
        keys=kjt.keys() * world_size,
        values=values[order],
        weights=weights[order] if weights is not None else None,
        lengths=new_lengths,
        stride=batch,
    )


class HashRwSparseFeaturesDist(RwSparseFeaturesDist):
    def __init__(self, pg, num_features: int, feature_key_buckets: List[int], device=None) -> None:
        super().__init__(pg=pg, num_features=num_features, feature_hash_sizes=[1] * num_features, device=device)
        if any(b < self._world_size for b in feature_key_buckets):
            raise ValueError(f"dynamic tables: key_buckets {feature_key_buckets} must be >= the row-wise "
                             f"world size {self._world_size}")
        self.register_buffer("_key_buckets", torch.tensor(feature_key_buckets, dtype=torch.long, device=device),
                             persistent=False)

    def forward(self, sparse_features: KeyedJaggedTensor):
        return self._dist(hash_bucketize(sparse_features, self._world_size, self._key_buckets))


class ExtDynamicRwPooledEmbeddingSharding(ExtRwPooledEmbeddingSharding):
    def create_input_dist(self, device=None):
        buckets = []
        for group in self._grouped_embedding_configs:
            for t in group.embedding_tables:
                buckets += [ext_table_config(t).key_buckets] * t.num_features()
        return HashRwSparseFeaturesDist(self._pg, self._get_num_features(), buckets,
                                        device if device is not None else self._device)

