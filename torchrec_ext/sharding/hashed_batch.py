"""Table batching for hashed shards: all of a lookup kernel's hashed shards pool in one
native call (`hashed_bags_forward`), and their fused update is one call too, the way
FBGEMM's table-batched embeddings serve many tables with one kernel.

Set TORCHREC_EXT_TABLE_BATCHING=0 to fall back to one call per table (the benchmark
measures both).
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch
from torch import nn

from torchrec_ext.modules.hashed_embedding_bag import HashedEmbeddingBagConfig
from torchrec_ext.modules.row_optim import SGD
from torchrec_ext.ops import hashed_bags, hashed_bags_sgd_
from torchrec_ext.ops.hashed import _ops


def table_batching_enabled() -> bool:
    return os.environ.get("TORCHREC_EXT_TABLE_BATCHING", "1") != "0"


def batchable(shard: nn.Module) -> bool:
    """A shard the hashed batch can serve: a hashed table's (its one piece held by this rank)."""
    return isinstance(getattr(shard, "config", None), HashedEmbeddingBagConfig) and not any(
        pc.replicated for pc in getattr(shard, "pieces", []))


class _FusedBatchLookup(torch.autograd.Function):
    """Pooled lookup of many shards whose backward applies their fused optimizer in place."""

    @staticmethod
    def forward(ctx, batch: "HashedBatch", values, offsets, psw, *weights):
        ctx.batch = batch
        ctx.has_psw = psw is not None
        ctx.save_for_backward(values, offsets, psw)
        return tuple(batch.pool([w.detach() for w in weights], values, offsets, psw))

    @staticmethod
    def backward(ctx, *grads):
        values, offsets, psw = ctx.saved_tensors
        need_psw = ctx.has_psw and ctx.needs_input_grad[3]
        gpsw = ctx.batch.backward_and_update(list(grads), values, offsets, psw if ctx.has_psw else None, need_psw)
        return (None, None, None, gpsw if need_psw else None) + (None,) * len(ctx.batch.shards)


class HashedBatch:
    """The hashed shards of one kernel; `forward` takes their features' values and offsets
    laid end to end (shard by shard, as a KJT holds them)."""

    def __init__(self, shards: Sequence[nn.Module]):
        self.shards = list(shards)
        self.layouts = [s.state for s in self.shards]
        self.poolings = [s.pooling for s in self.shards]

    def table_bags(self, batch: int) -> List[int]:
        ends = [0]
        for s in self.shards:
            ends.append(ends[-1] + s.num_features * batch)
        return ends

    def pool(self, weights, values, offsets, psw) -> List[torch.Tensor]:
        return hashed_bags(weights, values, offsets, psw, self._bags, self.poolings, self.layouts)

    def backward_and_update(self, grads, values, offsets, psw, need_psw) -> Optional[torch.Tensor]:
        optimizer = self.shards[0].optimizer
        weights = [s.weights[0].data for s in self.shards]
        if optimizer.kind == SGD:
            return hashed_bags_sgd_(weights, grads, values, offsets, psw, self._bags, self.poolings,
                                    self.layouts, optimizer.lr, need_psw)
        gw, gpsw = _ops.hashed_bags_backward(grads, weights, values, offsets, psw, self._bags, self.poolings,
                                             [v for lay in self.layouts for v in lay.args()], need_psw)
        for shard, g in zip(self.shards, gw):
            shard.apply_optimizer([(None, g)])
        return gpsw

    def forward(self, values, offsets, psw, batch: int, fused: bool) -> List[torch.Tensor]:
        self._bags = self.table_bags(batch)
        weights = [s.weights[0] for s in self.shards]
        if fused:
            return list(_FusedBatchLookup.apply(self, values, offsets, psw, *weights))
        return self.pool(weights, values, offsets, psw)  # dense gradients (data-parallel)
