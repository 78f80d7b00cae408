"""Embedding kernels that TorchRec's grouped lookups run for torchrec_ext tables.

TorchRec's `GroupedPooledEmbeddingsLookup` builds one kernel per group of tables; for
tables of this project it builds an `ExtPooledEmbeddingKernel`. A kernel holds the local
shards of its tables (built by their kind's shard form, see shard_forms.py), pools their
bags in batched native calls and, for model-parallel shardings, updates the shards in the
backward pass with a fused optimizer.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.distributed._shard.metadata import ShardMetadata
from torchrec.distributed.embedding_types import GroupedEmbeddingConfig
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import PoolingType
from torchrec.optim.fused import FusedOptimizer, FusedOptimizerModule
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext.modules.collection_base import bags_to_batch_major
from torchrec_ext.modules.table_kind import table_kind
from torchrec_ext.sharding import table_batch  # noqa: F401  (registers the fixed-state form)
from torchrec_ext.sharding.shard_forms import batch_shards, shard_form
from torchrec_ext.sharding.table_ref import ext_table_config, table_batching, without_ext_keys


class ExtPooledEmbeddingKernel(nn.Module):
    """Kernel for one group of torchrec_ext tables (the role FBGEMM's TBE plays in TorchRec).

    This dense form (data-parallel tables) leaves gradients on the weights for the dense
    optimizer; `ExtFusedPooledEmbeddingKernel` updates them in backward.
    """

    _fused = False

    def __init__(
        self,
        config: GroupedEmbeddingConfig,
        device: Optional[torch.device],
        sharding_type: Optional[ShardingType],
    ) -> None:
        super().__init__()
        self._config = config
        device = device or torch.device("cpu")
        tables = config.embedding_tables
        configs = [ext_table_config(t) for t in tables]
        self._form = shard_form(table_kind(configs[0]))
        # TorchRec applies MEAN after the reduce-scatter for row-wise shards.
        sum_only = sharding_type in (ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE)
        self.shards = nn.ModuleList(
            self._form.local_shard(t, cfg, 0 if (sum_only or t.pooling == PoolingType.SUM) else 1, device,
                                   sharding_type)
            for t, cfg in zip(tables, configs)
        )
        # Runs of shards of one batch key pool in one batched call each.
        self._segments = batch_shards(self.shards, self._form, table_batching(tables[0].fused_params))
        self._segment_splits = [s.num_features for s in self._segments]

    @property
    def config(self) -> GroupedEmbeddingConfig:
        return self._config

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        batch = features.stride()
        weights_on = self._config.is_weighted
        outs: List[torch.Tensor] = []
        for seg, kjt in zip(self._segments, features.split(self._segment_splits)):
            w = kjt.weights_or_none() if weights_on else None
            args = (kjt.values().long(), kjt.offsets().long(), w.float() if w is not None else None)
            pooled = seg.forward(*args, batch, self._fused)
            outs += [bags_to_batch_major(p, s.num_features, batch) for p, s in zip(pooled, seg.shards)]
        return torch.cat(outs, dim=1)

    def local_shards(self) -> Iterator[Tuple[str, str, nn.Parameter, Optional[ShardMetadata]]]:
        """(table, state name, local piece, its metadata or None if held whole by all ranks)."""
        for s in self.shards:
            for w, pc in zip(s.weights, s.pieces):
                yield s.table_name, pc.name, w, s.piece_metadata(pc)

    # TorchRec calls these on every lookup kernel around checkpoints.
    def flush(self) -> None:
        pass

    def purge(self) -> None:
        pass

    def named_parameters_by_table(self) -> Iterator[Tuple[str, nn.Parameter]]:
        for name, _, weight, _ in self.local_shards():
            yield name, weight


class ExtFusedPooledEmbeddingKernel(ExtPooledEmbeddingKernel, FusedOptimizerModule):
    """Model-parallel kernel: the backward pass applies the fused optimizer to the shards."""

    _fused = True

    def __init__(self, config, device, sharding_type) -> None:
        super().__init__(config, device, sharding_type)
        fused_params = without_ext_keys(config.embedding_tables[0].fused_params)
        where = f"table '{config.embedding_tables[0].name}'"
        self._optim = self._form.fused_optimizer(list(self.shards), fused_params, where)

    @property
    def fused_optimizer(self) -> FusedOptimizer:
        return self._optim
