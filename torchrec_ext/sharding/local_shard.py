"""A rank's shard of a fixed-state table (`FixedStateKind`) inside a lookup kernel, and the
kernel's fused optimizer for such shards."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.distributed._shard.metadata import ShardMetadata
from torchrec.distributed.embedding_types import ShardedEmbeddingTable
from torchrec.distributed.types import ShardingType

from torchrec_ext.modules.table_kind import StatePiece, table_kind
from torchrec_ext.sharding.fused_optim import ExtFusedOptimizer


def shard_offsets(meta: Optional[ShardMetadata]) -> Tuple[int, int]:
    return (0, 0) if meta is None else (int(meta.shard_offsets[0]), int(meta.shard_offsets[1]))


class LocalShard(nn.Module):
    """One local shard of one table: its state pieces, where they sit, how they pool."""

    def __init__(self, table: ShardedEmbeddingTable, config, pooling: int, device: torch.device,
                 sharding_type: Optional[ShardingType]):
        super().__init__()
        self.config = config
        self.kind = table_kind(config)
        self.table_name = table.name
        self.metadata: Optional[ShardMetadata] = table.local_metadata
        offsets = shard_offsets(table.local_metadata)
        sizes = (table.local_rows, table.local_cols)
        st = sharding_type.value if sharding_type is not None else ShardingType.DATA_PARALLEL.value
        self.pieces: List[StatePiece] = self.kind.state_pieces(config, st, offsets, sizes)
        self.num_features = table.num_features()
        self.pooling = pooling
        self.replica_sync = None  # set by the sharded collection for replicated pieces
        dtype = self.kind.parameter_dtype(config)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(pc.sizes, dtype=dtype, device=device)) for pc in self.pieces
        )
        self.optimizer: Optional[ExtFusedOptimizer] = None
        self.state = self.kind.make_shard_state(config, self.pieces, offsets, sizes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w, pc in zip(self.weights, self.pieces):
            if w.numel():
                self.kind.init_piece_(self.config, w.data, pc)

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


def fixed_fused_optimizer(shards: Sequence[LocalShard], fused_params: Mapping[str, Any],
                          where: str) -> ExtFusedOptimizer:
    """One optimizer over every piece of the kernel's shards, keyed "<table>.<state>"."""
    params: Dict[str, torch.Tensor] = {}
    for s in shards:
        for w, pc in zip(s.weights, s.pieces):
            key = f"{s.table_name}.{pc.name}"
            while key in params:  # several column shards of one table on this rank
                key += "_cw"
            params[key] = w
    optim = ExtFusedOptimizer(params, fused_params, where, allowed=shards[0].kind.optimizers)
    for s in shards:
        s.optimizer = optim
        for w in s.weights:
            w._in_backward_optimizers = [optim]  # as TorchRec marks fused weights
    return optim
