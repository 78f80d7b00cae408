"""Table batching for hashed shards: a run of hashed shards in one lookup kernel pools in
one native call (`hashed_bags_forward`), and their fused update is one call too, the way
FBGEMM's table-batched embeddings serve many tables with one kernel.

Set TORCHREC_EXT_TABLE_BATCHING=0 (read when the model is sharded) to give every hashed
shard a batch of its own: one call per table (the benchmark measures both).
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch
from torch import nn

from torchrec_ext.modules.hashed_embedding_bag import HashedEmbeddingBagConfig
from torchrec_ext.modules.row_optim import SGD
from torchrec_ext.ops import hashed_bags, hashed_bags_backward, hashed_bags_sgd_


def table_batching_enabled() -> bool:
    return os.environ.get("TORCHREC_EXT_TABLE_BATCHING", "1") != "0"


def batchable(shard: nn.Module) -> bool:
    """A shard a hashed batch serves: a hashed table's (its one piece held by this rank)."""
    return isinstance(getattr(shard, "config", None), HashedEmbeddingBagConfig) and not any(
        pc.replicated for pc in getattr(shard, "pieces", []))


class _FusedBatchLookup(torch.autograd.Function):
    """Pooled lookup of many shards whose backward applies their fused optimizer in place."""

    @staticmethod
    def forward(ctx, batch: "HashedBatch", table_bags, values, offsets, psw, *weights):
        ctx.batch, ctx.table_bags = batch, table_bags
        ctx.has_psw = psw is not None
        ctx.save_for_backward(values, offsets, psw)
        return tuple(batch.pool([w.detach() for w in weights], values, offsets, psw, table_bags))

    @staticmethod
    def backward(ctx, *grads):
        values, offsets, psw = ctx.saved_tensors
        need_psw = ctx.has_psw and ctx.needs_input_grad[4]
        gpsw = ctx.batch.backward_and_update(list(grads), values, offsets, psw if ctx.has_psw else None,
                                             ctx.table_bags, need_psw)
        return (None, None, None, None, gpsw if need_psw else None) + (None,) * len(ctx.batch.shards)


class HashedBatch:
    """Hashed shards served together; `forward` takes their features' values and offsets
    laid end to end (shard by shard, as a KJT holds them). Not a module: the kernel owns
    the shards (and their parameters)."""

    def __init__(self, shards: Sequence[nn.Module]):
        self.shards = list(shards)
        self.layouts = [s.state for s in self.shards]
        self.poolings = [s.pooling for s in self.shards]
        self.num_features = sum(s.num_features for s in self.shards)

    def table_bags(self, batch: int) -> List[int]:
        ends = [0]
        for s in self.shards:
            ends.append(ends[-1] + s.num_features * batch)
        return ends

    def pool(self, weights, values, offsets, psw, table_bags) -> List[torch.Tensor]:
        return hashed_bags(weights, values, offsets, psw, table_bags, self.poolings, self.layouts)

    def backward_and_update(self, grads, values, offsets, psw, table_bags, need_psw) -> Optional[torch.Tensor]:
        optimizer = self.shards[0].optimizer
        weights = [s.weights[0].data for s in self.shards]
        if optimizer.kind == SGD:  # straight into the buffers: no buffer-sized gradient
            return hashed_bags_sgd_(weights, grads, values, offsets, psw, table_bags, self.poolings,
                                    self.layouts, optimizer.lr, need_psw)
        gw, gpsw = hashed_bags_backward(grads, weights, values, offsets, psw, table_bags, self.poolings,
                                        self.layouts, need_psw)
        for shard, g in zip(self.shards, gw):
            shard.apply_optimizer([(None, g)])
        return gpsw

    def forward(self, values, offsets, psw, batch: int, fused: bool) -> List[torch.Tensor]:
        table_bags = self.table_bags(batch)
        weights = [s.weights[0] for s in self.shards]
        if fused:
            return list(_FusedBatchLookup.apply(self, table_bags, values, offsets, psw, *weights))
        return self.pool(weights, values, offsets, psw, table_bags)  # dense gradients (data-parallel)


def batch_shards(shards: Sequence[nn.Module]) -> list:
    """The kernel's shards in order, each run of hashed shards as one HashedBatch (or, with
    table batching off, each hashed shard as a batch of its own)."""
    out: list = []
    run: List[nn.Module] = []
    for s in list(shards) + [None]:
        if s is not None and batchable(s):
            run.append(s)
            continue
        if run:
            out += [HashedBatch(run)] if table_batching_enabled() else [HashedBatch([r]) for r in run]
            run = []
        if s is not None:
            out.append(s)
    return out
