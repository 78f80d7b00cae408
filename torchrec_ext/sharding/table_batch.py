"""Table batching for fixed-state tables: the shards of one kind in a lookup kernel pool in
one native call (`hashed_bags_forward`, `qr_bags_forward`), and their backward pass is one
call too, the way FBGEMM's table-batched embeddings serve many tables with one kernel.

The kind's batched kernels (`FixedStateKind.pool_batch`, `backward_batch`, and
`pool_batch_keep` / `sgd_batch_` where it has them) do the work; `weights` lists every
shard's pieces, shard after shard. What `pool_batch_keep` keeps from the forward pass
(e.g. the hashed tables' block positions) the fused path hands to the backward pass.
The sharders' `table_batching=False` gives every shard a batch of its own.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from torchrec_ext.modules.row_optim import SGD
from torchrec_ext.modules.table_kind import FixedStateKind
from torchrec_ext.sharding.local_shard import LocalShard, fixed_fused_optimizer
from torchrec_ext.sharding.shard_forms import ShardForm, register_shard_form, shard_bags


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
        self.kind = self.shards[0].kind
        assert all(s.kind is self.kind for s in self.shards)
        self.states = [s.state for s in self.shards]
        self.poolings = [s.pooling for s in self.shards]
        self.num_features = sum(s.num_features for s in self.shards)
        # A replicated piece's update waits for the ranks' summed gradient (replica_sync),
        # so only batches without one may update in place.
        self._sgd_in_place = self.kind.fused_sgd and not any(
            pc.replicated for s in self.shards for pc in s.pieces)

    def weights(self) -> List[nn.Parameter]:
        return [w for s in self.shards for w in s.weights]

    def pool(self, weights, values, offsets, psw, table_bags) -> List[torch.Tensor]:
        return self.kind.pool_batch(self.states, weights, values, offsets, psw, table_bags, self.poolings)

    def pool_keep(self, weights, values, offsets, psw, table_bags):
        """pool, and what the kind keeps from it for its backward pass (None: nothing)."""
        return self.kind.pool_batch_keep(self.states, weights, values, offsets, psw, table_bags, self.poolings)

    def backward_and_update(self, grads, values, offsets, psw, table_bags, need_psw,
                            kept=None) -> Optional[torch.Tensor]:
        optimizer = self.shards[0].optimizer
        weights = [w.data for w in self.weights()]
        if optimizer.kind == SGD and self._sgd_in_place:  # no gradient the size of the state
            return self.kind.sgd_batch_(self.states, weights, grads, values, offsets, psw, table_bags,
                                        self.poolings, optimizer.lr, need_psw, kept)
        per_shard, gpsw = self.kind.backward_batch(self.states, grads, weights, values, offsets, psw,
                                                   table_bags, self.poolings, need_psw, kept)
        for shard, piece_grads in zip(self.shards, per_shard):
            shard.apply_optimizer(piece_grads)
        return gpsw

    def forward(self, values, offsets, psw, batch: int, fused: bool) -> List[torch.Tensor]:
        table_bags = shard_bags(self.shards, batch)
        weights = self.weights()
        if fused:
            return list(_FusedBatchLookup.apply(self, table_bags, values, offsets, psw, *weights))
        return self.pool(weights, values, offsets, psw, table_bags)  # dense gradients (data-parallel)


register_shard_form(FixedStateKind, ShardForm(
    local_shard=LocalShard,
    batch_key=lambda shard: shard.kind,  # one call serves one kind
    batch=TableBatch,
    fused_optimizer=fixed_fused_optimizer,
))
