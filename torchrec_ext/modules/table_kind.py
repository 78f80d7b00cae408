"""The contract between a torchrec_ext table config and the sharding layer.

TorchRec plans and shards one 2-D tensor per table. A torchrec_ext table offers the
planner a *view* of itself (`parameter_shape()`: rows the row-wise plan cuts, and the
output columns the column-wise plan cuts) and says, for each shard of that view, which
*state pieces* the shard holds: blocks of the table's real tensors (a hashed table has
one, its buffer; a QR table one per partition table). The sharded kernels, the state
dict and the planner's memory estimate are all built from these pieces, so a table
is the same function of its ids under every plan.

A config implements:
  parameter_shape()                      the planner's view, (rows, output dim)
  rw_id_space(block_rows, world_size)    ids TorchRec bucketizes row-wise, so that
                                         rank r's id block matches view rows r*block_rows..
  id_bounds()                            valid ids, (low, high)
  row_shard_unit(), col_shard_unit()     shards must start on multiples of these
  unsupported_sharding(sharding_type)    why a sharding type cannot work, or None
  state_names()                          suffixes of the state tensors ("weight", ...)
  state_shape(name)                      global shape of one state tensor
  state_pieces(sharding_type, offsets, sizes) -> [StatePiece] of the view shard
  init_piece_(tensor, piece)             plan-independent init of one piece
  make_shard_state(pieces, offsets, sizes) what the kernels need (a layout)
  pool_shard(state, weights, ...)        pooled lookup of one shard ([bags, cols]): the
                                         unsharded module's forward
  pool_batch, backward_batch             the sharded kernels: many shards in one call
                                         (sharding/table_batch.py); optionally
  sgd_batch_                             the backward pass fused with SGD, in place
and may set the class attribute
  kernel_group                           tables of one group share a lookup kernel
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class StatePiece:
    """A block of one state tensor that a shard holds.

    replicated: every rank of the plan holds this same block (e.g. the small partition
    tables of a row-wise QR table); its gradients are summed across ranks.
    """

    name: str
    offsets: Tuple[int, int]
    sizes: Tuple[int, int]
    replicated: bool = False

    @property
    def numel(self) -> int:
        return self.sizes[0] * self.sizes[1]
