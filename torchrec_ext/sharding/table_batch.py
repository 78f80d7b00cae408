"""Table batching: the fixed-shape shards of one kind in a lookup kernel pool in one
native call (`hashed_bags_forward`, `qr_bags_forward`), and their backward pass is
one call too, the way FBGEMM's table-batched embeddings serve many tables with one
kernel.

A kind that batches gives its config class (see modules/table_kind.py):
  pool_batch(states, weights, values, offsets, psw, table_bags, poolings) -> [out per shard]
  backward_batch(states, grads, weights, ...) -> ([[(rows or None, grad)] per piece] per shard, psw grad)
and may give sgd_batch_(states, weights, grads, ..., lr, need_psw) -> psw grad, the
backward pass fused with SGD in place. `weights` lists every shard's pieces, shard
after shard. A kind may also give
  pool_batch_keep(states, weights, values, ...) -> ([out per shard], kept)
whose `kept` (what the forward pass found that the backward pass needs again, e.g. the
hashed tables' block positions) the fused path hands to backward_batch and sgd_batch_
as `kept=`.

Dynamic tables batch the same way (sharding/dynamic_batch.py). Set
TORCHREC_EXT_TABLE_BATCHING=0 (read when the model is sharded) to give every shard
a batch of its own: one call per table (the benchmark measures both).
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch
from torch import nn

from torchrec_ext.modules.row_optim import SGD


def table_batching_enabled() -> bool:
    return os.environ.get("TORCHREC_EXT_TABLE_BATCHING", "1") != "0"


def shard_bags(shards: Sequence[nn.Module], batch: int) -> List[int]:
    """table_bags of a batch: shard t owns bags [ends[t], ends[t + 1]) of the KJT's offsets."""
    ends = [0]
    for s in shards:
        ends.append(ends[-1] + s.num_features * batch)
    return ends


class _FusedBatchLookup(torch.autograd.Function):
    """Pooled lookup of many shards whose backward applies their fused optimizer in place."""

    @staticmethod
    def forward(ctx, batch: "TableBatch", table_bags, values, offsets, psw, *weights):
        ctx.batch, ctx.table_bags = batch, table_bags
        ctx.has_psw = psw is not None
        ctx.num_weights = len(weights)
        ctx.save_for_backward(values, offsets, psw)
        weights = [w.detach() for w in weights]
        if any(ctx.needs_input_grad[5:]):  # a backward pass will follow
            out, ctx.kept = batch.pool_keep(weights, values, offsets, psw, table_bags)
        else:
            out, ctx.kept = batch.pool(weights, values, offsets, psw, table_bags), None
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        values, offsets, psw = ctx.saved_tensors
        need_psw = ctx.has_psw and ctx.needs_input_grad[4]
        kept, ctx.kept = ctx.kept, None  # freed with this step, not with the graph
        gpsw = ctx.batch.backward_and_update([g.contiguous() for g in grads], values, offsets,
                                             psw if ctx.has_psw else None, ctx.table_bags, need_psw, kept)
        return (None, None, None, None, gpsw if need_psw else None) + (None,) * ctx.num_weights


class TableBatch:
    """Shards of one kind served together; `forward` takes their features' values and
    offsets laid end to end (shard by shard, as a KJT holds them). Not a module: the
    kernel owns the shards (and their parameters)."""

    def __init__(self, shards: Sequence[nn.Module]):
        self.shards = list(shards)
        self.kind = type(self.shards[0].config)
        assert all(type(s.config) is self.kind for s in self.shards)
        self.states = [s.state for s in self.shards]
        self.poolings = [s.pooling for s in self.shards]
        self.num_features = sum(s.num_features for s in self.shards)
        # A replicated piece's update waits for the ranks' summed gradient (replica_sync),
        # so only batches without one may update in place.
        self._sgd_in_place = hasattr(self.kind, "sgd_batch_") and not any(
            pc.replicated for s in self.shards for pc in s.pieces)

    def weights(self) -> List[nn.Parameter]:
        return [w for s in self.shards for w in s.weights]

    def pool(self, weights, values, offsets, psw, table_bags) -> List[torch.Tensor]:
        return self.kind.pool_batch(self.states, weights, values, offsets, psw, table_bags, self.poolings)

    def pool_keep(self, weights, values, offsets, psw, table_bags):
        """pool, and what the kind keeps from it for its backward pass (None: nothing)."""
        keep = getattr(self.kind, "pool_batch_keep", None)
        if keep is None:
            return self.pool(weights, values, offsets, psw, table_bags), None
        return keep(self.states, weights, values, offsets, psw, table_bags, self.poolings)

    def backward_and_update(self, grads, values, offsets, psw, table_bags, need_psw,
                            kept=None) -> Optional[torch.Tensor]:
        optimizer = self.shards[0].optimizer
        weights = [w.data for w in self.weights()]
        extra = {} if kept is None else {"kept": kept}
        if optimizer.kind == SGD and self._sgd_in_place:  # no gradient the size of the state
            return self.kind.sgd_batch_(self.states, weights, grads, values, offsets, psw, table_bags,
                                        self.poolings, optimizer.lr, need_psw, **extra)
        per_shard, gpsw = self.kind.backward_batch(self.states, grads, weights, values, offsets, psw,
                                                   table_bags, self.poolings, need_psw, **extra)
        for shard, piece_grads in zip(self.shards, per_shard):
            shard.apply_optimizer(piece_grads)
        return gpsw

    def forward(self, values, offsets, psw, batch: int, fused: bool) -> List[torch.Tensor]:
        table_bags = shard_bags(self.shards, batch)
        weights = self.weights()
        if fused:
            return list(_FusedBatchLookup.apply(self, table_bags, values, offsets, psw, *weights))
        return self.pool(weights, values, offsets, psw, table_bags)  # dense gradients (data-parallel)


def _batch_key(shard: nn.Module):
    """Shards with equal keys batch together."""
    config = shard.config
    if getattr(config, "dynamic", False):
        return ("dynamic", shard.rows.dtype)  # one call reads one storage dtype
    if not hasattr(config, "pool_batch"):
        raise TypeError(f"table '{shard.table_name}': {type(config).__name__} has no batched kernels")
    return ("fixed", type(config))


def batch_shards(shards: Sequence[nn.Module]) -> list:
    """The kernel's shards in order, each run of shards with one batch key as one batch
    (TableBatch; DynamicTableBatch for dynamic tables), or with table batching off, each
    shard as a batch of its own."""
    from torchrec_ext.sharding.dynamic_batch import DynamicTableBatch

    out: list = []
    run: List[nn.Module] = []

    def close_run() -> None:
        make = DynamicTableBatch if _batch_key(run[0])[0] == "dynamic" else TableBatch
        out.extend([make(run)] if table_batching_enabled() else [make([r]) for r in run])

    for s in shards:
        if run and _batch_key(s) != _batch_key(run[0]):
            close_run()
            run = []
        run.append(s)
    if run:
        close_run()
    return out
