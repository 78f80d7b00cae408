"""Python layer of the hashed-table ops: fake kernels, autograd, and typed calls.

The native ops are batched: one call pools the bags of many tables (see csrc/ops.cpp).
`hashed_bag*` are the one-table form of the same ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from torchrec_ext.ops import _native
from torchrec_ext.ops.batched import bag_counts, flat_layouts, one_table, register_batched_autograd

_native.load()
_ops = torch.ops.torchrec_ext


@dataclass(frozen=True)
class HashedShardLayout:
    """Where a shard of a hashed table sits: see csrc/hashed_layout.h."""

    mode: int  # 0 element, 1 block
    chunk: int
    rows_per_region: int
    slots: int
    id_offset: int = 0
    col_offset: int = 0
    seed: int = 0
    signed: bool = False
    align: int = 1  # block mode: block starts are multiples of this many elements

    def args(self) -> List[int]:
        """The layout's fields in the order the native ops read them."""
        return [self.mode, self.chunk, self.rows_per_region, self.slots, self.id_offset,
                self.col_offset, self.seed, int(self.signed), self.align]


@torch.library.register_fake("torchrec_ext::hashed_bags_forward")
def _forward_fake(weights, indices, offsets, per_sample_weights, table_bags, poolings, layouts):
    return [w.new_empty((n, w.shape[1])) for w, n in zip(weights, bag_counts(table_bags))]


@torch.library.register_fake("torchrec_ext::hashed_bags_forward_keep")
def _forward_keep_fake(weights, indices, offsets, per_sample_weights, table_bags, poolings, layouts):
    out = _forward_fake(weights, indices, offsets, per_sample_weights, table_bags, poolings, layouts)
    n = len(HashedShardLayout.__dataclass_fields__)  # ints per table in `layouts`
    cols = max((w.shape[1] // layouts[n * t + 1] for t, w in enumerate(weights) if layouts[n * t] == 1),
               default=0)
    rows = indices.shape[0] if indices.device.type == "cpu" else 0  # CUDA keeps nothing
    return out, indices.new_empty((rows, cols), dtype=torch.int64)


@torch.library.register_fake("torchrec_ext::hashed_bags_backward")
def _backward_fake(grad_outputs, weights, indices, offsets, per_sample_weights, table_bags, poolings,
                   layouts, psw_grad, positions=None):
    n = indices.shape[0] if psw_grad else 0
    return [torch.empty_like(w) for w in weights], indices.new_empty((n,), dtype=torch.float32)


@torch.library.register_fake("torchrec_ext::hashed_bags_sgd_")
def _sgd_fake(weights, grad_outputs, indices, offsets, per_sample_weights, table_bags, poolings,
              layouts, lr, psw_grad, positions=None):
    n = indices.shape[0] if psw_grad else 0
    return indices.new_empty((n,), dtype=torch.float32)


@torch.library.register_fake("torchrec_ext::coord_uniform_")
def _coord_uniform_fake(weight, row_offset, col_offset, seed, low, high):
    return weight


register_batched_autograd("torchrec_ext::hashed_bags_forward", _ops.hashed_bags_backward)


def hashed_bags(weights: Sequence[torch.Tensor], indices: torch.Tensor, offsets: torch.Tensor,
                per_sample_weights: Optional[torch.Tensor], table_bags: Sequence[int],
                poolings: Sequence[int], layouts: Sequence[HashedShardLayout]) -> List[torch.Tensor]:
    """Pooled lookups of many hashed shards in one call; table t pools bags
    table_bags[t] .. table_bags[t + 1] of `offsets`. Differentiable in weights and psw."""
    return _ops.hashed_bags_forward(list(weights), indices, offsets, per_sample_weights, list(table_bags),
                                    list(poolings), flat_layouts(layouts))


def hashed_bags_keep(weights: Sequence[torch.Tensor], indices: torch.Tensor, offsets: torch.Tensor,
                     per_sample_weights: Optional[torch.Tensor], table_bags: Sequence[int],
                     poolings: Sequence[int], layouts: Sequence[HashedShardLayout]):
    """`hashed_bags` (not differentiable) that also returns where each id's blocks lie
    (CPU; empty on CUDA, whose kernels recompute them): pass it as `positions` to the
    backward of the same call, which then reads them instead of hashing every id again
    (the fused training path)."""
    out, positions = _ops.hashed_bags_forward_keep(list(weights), indices, offsets, per_sample_weights,
                                                   list(table_bags), list(poolings), flat_layouts(layouts))
    return list(out), positions


def hashed_bags_backward(grad_outputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                         indices: torch.Tensor, offsets: torch.Tensor,
                         per_sample_weights: Optional[torch.Tensor], table_bags: Sequence[int],
                         poolings: Sequence[int], layouts: Sequence[HashedShardLayout], psw_grad: bool,
                         positions: Optional[torch.Tensor] = None):
    """(dense weight gradient per table, psw gradient or empty) of `hashed_bags`;
    `positions` from `hashed_bags_keep` of the same call spares the hashing."""
    gw, gpsw = _ops.hashed_bags_backward(list(grad_outputs), list(weights), indices, offsets, per_sample_weights,
                                         list(table_bags), list(poolings), flat_layouts(layouts), psw_grad,
                                         positions)
    return list(gw), gpsw


def hashed_bags_sgd_(weights: Sequence[torch.Tensor], grad_outputs: Sequence[torch.Tensor],
                     indices: torch.Tensor, offsets: torch.Tensor,
                     per_sample_weights: Optional[torch.Tensor], table_bags: Sequence[int],
                     poolings: Sequence[int], layouts: Sequence[HashedShardLayout], lr: float,
                     psw_grad: bool, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Backward fused with SGD: `weight -= lr * grad_weight` in place for every table, with
    no dense gradient. Returns the psw gradient (from the weights before the update) or empty.
    `positions` as in `hashed_bags_backward`."""
    return _ops.hashed_bags_sgd_(list(weights), list(grad_outputs), indices, offsets, per_sample_weights,
                                 list(table_bags), list(poolings), flat_layouts(layouts), lr, psw_grad,
                                 positions)


def hashed_bag(weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
               per_sample_weights: Optional[torch.Tensor], pooling: int,
               layout: HashedShardLayout) -> torch.Tensor:
    """Pooled lookup of one hashed table shard; differentiable in weight and weights."""
    return hashed_bags([weight], indices, offsets, per_sample_weights, one_table(offsets), [pooling], [layout])[0]


def hashed_bag_sgd_(weight: torch.Tensor, grad_output: torch.Tensor, indices: torch.Tensor,
                    offsets: torch.Tensor, per_sample_weights: Optional[torch.Tensor], pooling: int,
                    layout: HashedShardLayout, lr: float, psw_grad: bool) -> torch.Tensor:
    """One-table `hashed_bags_sgd_`."""
    return hashed_bags_sgd_([weight], [grad_output], indices, offsets, per_sample_weights, one_table(offsets),
                            [pooling], [layout], lr, psw_grad)


def coord_uniform_(weight: torch.Tensor, row_offset: int, col_offset: int, seed: int,
                   low: float, high: float) -> torch.Tensor:
    """Deterministic U(low, high) init from global element coordinates (plan-independent)."""
    if weight.device.type == "meta" or weight.numel() == 0:
        return weight
    with torch.no_grad():
        return _ops.coord_uniform_(weight, row_offset, col_offset, seed, low, high)
