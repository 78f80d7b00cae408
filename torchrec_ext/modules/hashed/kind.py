"""`HashedTableKind`: how a hashed table's buffer is planned, cut, initialised and pooled.

A row-wise shard holds whole row regions of the buffer and serves exactly those regions'
ids; a column-wise shard holds whole column regions. Every element is initialised from
its global coordinates. So each shard computes its part of the table alone, and the table
is the same function of the ids under every plan.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch

from torchrec_ext.modules.hashed.config import MODES, HashedEmbeddingBagConfig
from torchrec_ext.modules.table_kind import FixedStateKind, StatePiece
from torchrec_ext.ops import (
    HashedShardLayout,
    coord_uniform_,
    hashed_bags,
    hashed_bags_backward,
    hashed_bags_keep,
    hashed_bags_sgd_,
)


def init_bounds(cfg: HashedEmbeddingBagConfig) -> tuple:
    """TorchRec's default, U(-sqrt(1/n), sqrt(1/n)) of the *virtual* table, or
    weight_init_min / weight_init_max."""
    bound = math.sqrt(1.0 / cfg.num_embeddings)
    low = cfg.weight_init_min if cfg.weight_init_min is not None else -bound
    high = cfg.weight_init_max if cfg.weight_init_max is not None else bound
    return low, high


def shard_layout(cfg: HashedEmbeddingBagConfig, row_offset: int = 0, col_offset: int = 0) -> HashedShardLayout:
    """Layout of the shard whose buffer block starts at (row_offset, col_offset)."""
    if row_offset % cfg.slots or col_offset % cfg.chunk:
        raise ValueError(
            f"hashed table '{cfg.name}': a shard must start on a region boundary "
            f"(row offset {row_offset} vs {cfg.slots} slots per region, column "
            f"offset {col_offset} vs chunk {cfg.chunk})"
        )
    return HashedShardLayout(
        mode=MODES[cfg.mode],
        chunk=cfg.chunk,
        rows_per_region=cfg.rows_per_region,
        slots=cfg.slots,
        id_offset=(row_offset // cfg.slots) * cfg.rows_per_region,
        col_offset=col_offset,
        seed=cfg.seed,
        signed=cfg.signed,
        align=cfg.align,
    )


def init_shard_(cfg: HashedEmbeddingBagConfig, weight: torch.Tensor, row_offset: int = 0,
                col_offset: int = 0) -> torch.Tensor:
    """Fills the buffer block at (row_offset, col_offset) from its global coordinates."""
    low, high = init_bounds(cfg)
    return coord_uniform_(weight, row_offset, col_offset, cfg.seed, low, high)


class HashedTableKind(FixedStateKind):
    """One state tensor, "weight": the buffer, [row_regions * slots, dim]."""

    fused_sgd = True

    def kernel_group(self, config) -> Optional[str]:
        return "<hashed tables>"

    def parameter_shape(self, config):
        return (config.buffer_rows, config.embedding_dim)

    def id_bounds(self, config):
        return (0, config.num_embeddings)

    def rw_id_space(self, config, block_rows, world_size):
        # A row-wise block of whole regions serves exactly those regions' ids.
        return (block_rows // config.slots) * config.rows_per_region * world_size

    def row_shard_unit(self, config):
        return config.slots  # whole regions

    def col_shard_unit(self, config):
        return config.chunk

    def shard_unit_rule(self, config):
        return f"row-wise world sizes must divide row_regions={config.row_regions}"

    def state_names(self, config) -> List[str]:
        return ["weight"]

    def state_shape(self, config, name):
        return self.parameter_shape(config)

    def state_pieces(self, config, sharding_type, offsets, sizes) -> List[StatePiece]:
        return [StatePiece("weight", tuple(offsets), tuple(sizes))]

    def init_piece_(self, config, tensor, piece):
        return init_shard_(config, tensor, *piece.offsets)

    def make_shard_state(self, config, pieces, offsets, sizes) -> HashedShardLayout:
        return shard_layout(config, *offsets)

    def pool_batch(self, states, weights, values, offsets, psw, table_bags, poolings):
        return hashed_bags(weights, values, offsets, psw, table_bags, poolings, states)

    def pool_batch_keep(self, states, weights, values, offsets, psw, table_bags, poolings):
        # Block mode keeps each id's block positions: the backward reads them instead of hashing.
        return hashed_bags_keep(weights, values, offsets, psw, table_bags, poolings, states)

    def backward_batch(self, states, grads, weights, values, offsets, psw, table_bags, poolings, need_psw,
                       kept=None):
        gw, gpsw = hashed_bags_backward(grads, weights, values, offsets, psw, table_bags, poolings, states,
                                        need_psw, kept)
        return [[(None, g)] for g in gw], gpsw

    def sgd_batch_(self, states, weights, grads, values, offsets, psw, table_bags, poolings, lr, need_psw,
                   kept=None):
        return hashed_bags_sgd_(weights, grads, values, offsets, psw, table_bags, poolings, states, lr, need_psw,
                                kept)
