"""Embedding kernels that TorchRec's grouped lookups run for torchrec_ext tables.

TorchRec's `GroupedPooledEmbeddingsLookup` builds one kernel per group of tables; for
tables of this project it builds an `ExtPooledEmbeddingKernel`. A kernel holds the local
shards of its tables, pools their bags with the table's native op and, for model-parallel
shardings, updates the shards in the backward pass with a fused optimizer.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.distributed._shard.metadata import ShardMetadata
from torchrec.distributed.embedding_types import GroupedEmbeddingConfig, ShardedEmbeddingTable
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import PoolingType
from torchrec.optim.fused import FusedOptimizerModule
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext.modules.collection_base import bags_to_batch_major
from torchrec_ext.modules.table_kind import StatePiece
from torchrec_ext.sharding.fused_optim import ExtFusedOptimizer
from torchrec_ext.sharding.table_batch import batch_shards

# Key under which a table's torchrec_ext config rides in its per-table fused_params.
TABLE_KEY = "_torchrec_ext_table"


def ext_table_config(table: ShardedEmbeddingTable):
    """The torchrec_ext config of a table, or None for TorchRec's own tables."""
    ref = (table.fused_params or {}).get(TABLE_KEY)
    return None if ref is None else ref.config


def _offsets(meta: Optional[ShardMetadata]) -> Tuple[int, int]:
    return (0, 0) if meta is None else (int(meta.shard_offsets[0]), int(meta.shard_offsets[1]))


class LocalShard(nn.Module):
    """One local shard of one table: its state pieces, where they sit, how they pool."""

    def __init__(self, table: ShardedEmbeddingTable, pooling: int, device: torch.device,
                 sharding_type: Optional[ShardingType]):
        super().__init__()
        self.config = ext_table_config(table)
        self.table_name = table.name
        self.metadata: Optional[ShardMetadata] = table.local_metadata
        offsets = _offsets(table.local_metadata)
        sizes = (table.local_rows, table.local_cols)
        st = sharding_type.value if sharding_type is not None else ShardingType.DATA_PARALLEL.value
        self.pieces: List[StatePiece] = self.config.state_pieces(st, offsets, sizes)
        self.num_features = table.num_features()
        self.pooling = pooling
        self.replica_sync = None  # set by the sharded collection for replicated pieces
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(pc.sizes, device=device)) for pc in self.pieces
        )
        self.optimizer: Optional[ExtFusedOptimizer] = None
        self.state = self.config.make_shard_state(self.pieces, offsets, sizes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w, pc in zip(self.weights, self.pieces):
            if w.numel():
                self.config.init_piece_(w.data, pc)

    def piece_metadata(self, piece: StatePiece) -> Optional[ShardMetadata]:
        """Where a piece sits in its state tensor; None if every rank holds it whole."""
        if self.metadata is None or piece.replicated:
            return None
        return ShardMetadata(shard_offsets=list(piece.offsets), shard_sizes=list(piece.sizes),
                             placement=self.metadata.placement)

    def apply_optimizer(self, grads) -> None:
        for i, (w, pc, (rows, grad)) in enumerate(zip(self.weights, self.pieces, grads)):
            if pc.replicated and self.replica_sync is not None:
                # Every rank holds this piece: its update waits for the ranks' summed gradient.
                self.replica_sync.add(self.replica_key(i), rows, grad, w)
            else:
                self.optimizer.apply(w, grad, rows)

    def replica_key(self, index: int) -> str:
        return f"{self.table_name}.{self.pieces[index].name}"


def _local_shard(table: ShardedEmbeddingTable, pooling: int, device: torch.device,
                 sharding_type: Optional[ShardingType]) -> nn.Module:
    config = ext_table_config(table)
    if getattr(config, "dynamic", False):
        from torchrec_ext.sharding.dynamic_shard import DynamicLocalShard

        return DynamicLocalShard(table, config, pooling, device, sharding_type)
    return LocalShard(table, pooling, device, sharding_type)


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
        # TorchRec applies MEAN after the reduce-scatter for row-wise shards.
        sum_only = sharding_type in (ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE)
        self.shards = nn.ModuleList(
            _local_shard(t, 0 if (sum_only or t.pooling == PoolingType.SUM) else 1, device, sharding_type)
            for t in config.embedding_tables
        )
        # Runs of shards of one kind pool in one batched call each (see table_batch.py and
        # dynamic_batch.py); every shard kind batches.
        self._segments = batch_shards(self.shards)  # a plain list: self.shards owns the modules
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
        fused_params = dict(config.embedding_tables[0].fused_params or {})
        where = f"table '{config.embedding_tables[0].name}'"
        dynamic = [s for s in self.shards if not isinstance(s, LocalShard)]
        if dynamic:
            from torchrec_ext.sharding.dynamic_optim import DynamicFusedUpdate

            for s in dynamic:
                s.optim_key = f"{s.table_name}.rows"
                while any(o is not s and o.optim_key == s.optim_key for o in dynamic):
                    s.optim_key += "_cw"  # several column shards of one table on this rank
            self._optim = DynamicFusedUpdate({s.optim_key: s.rows for s in dynamic}, fused_params, where,
                                             reduce_by={s.optim_key: s.config.grad_reduce_by for s in dynamic})
            for s in dynamic:
                s.optimizer = self._optim
            return
        params: Dict[str, torch.Tensor] = {}
        for table, name, weight, _ in self.local_shards():
            key = f"{table}.{name}"
            while key in params:  # several column shards of one table on this rank
                key += "_cw"
            params[key] = weight
        self._optim = ExtFusedOptimizer(params, fused_params, where)
        for s in self.shards:
            s.optimizer = self._optim
            for w in s.weights:
                w._in_backward_optimizers = [self._optim]  # as TorchRec marks fused weights

    @property
    def fused_optimizer(self) -> ExtFusedOptimizer:
        return self._optim
