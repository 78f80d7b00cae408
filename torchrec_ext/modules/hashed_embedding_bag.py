"""Hashed tables: a virtual [num_embeddings, dim] table backed by a compressed buffer.

Element mode (HashedNets): element (id, j) reads buffer[h(id, j)], optionally times a
sign hash. Block mode (ROBE-Z): each block of Z consecutive elements of a row reads Z
consecutive buffer elements from a hashed offset (circular within its region). Offsets
are multiples of `block_align` elements: 16 fp32 columns start a cache line, so a block of
32 touches 2 lines instead of 3 (measured in benchmarks/; 1 gives the paper's any offset).

The buffer is a [row_regions * slots, dim] matrix. Ids are cut into `row_regions`
contiguous ranges; range r owns buffer rows [r * slots, (r + 1) * slots). Columns are
regions of their own (one column in element mode, Z columns in block mode). Because no
id reaches outside its region, TorchRec's row-wise and column-wise shards of the buffer
compute their part of the table alone, and the table is the same function of the ids
under every plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_ext.modules.collection_base import ExtEmbeddingBagCollection
from torchrec_ext.modules.table_kind import StatePiece
from torchrec_ext.ops import (
    HashedShardLayout,
    coord_uniform_,
    hashed_bag,
    hashed_bags,
    hashed_bags_backward,
    hashed_bags_keep,
    hashed_bags_sgd_,
)

MODES = {"element": 0, "block": 1}


@dataclass
class HashedEmbeddingBagConfig(EmbeddingBagConfig):
    """`EmbeddingBagConfig` plus the memory budget of a hashed table.

    compression: buffer size / (num_embeddings x embedding_dim), in (0, 1].
    buffer_size: explicit buffer size in elements (overrides compression).
    mode: "block" (ROBE-Z, default) or "element" (HashedNets).
    chunk_size: Z of block mode; 0 picks gcd(embedding_dim, 32).
    block_align: block mode: a block starts at a multiple of this many elements of its
        region; must divide Z. 0 picks gcd(Z, 16) (a 64-byte cache line of fp32); 1 lets a
        block start anywhere (ROBE-Z as published).
    seed: hash (and init) seed; two tables with different seeds share nothing.
    signed: multiply each element (element mode) or block (block mode) by a +-1 hash.
    row_regions: independent id ranges; row-wise world sizes must divide it.
    """

    # Tables with the same kernel_group share a TorchRec lookup kernel, which serves them
    # in one batched call (sharding/table_batch.py). A class attribute, not a field.
    kernel_group = "<hashed tables>"

    compression: float = 0.125
    buffer_size: Optional[int] = None
    mode: str = "block"
    chunk_size: int = 0
    block_align: int = 0
    seed: int = 0
    signed: bool = False
    row_regions: int = 8

    def __post_init__(self) -> None:
        name = self.name or "<unnamed>"
        if self.num_embeddings <= 0 or self.embedding_dim <= 0:
            raise ValueError(f"hashed table '{name}': num_embeddings and embedding_dim must be positive")
        if self.mode not in MODES:
            raise ValueError(f"hashed table '{name}': mode must be 'element' or 'block', got {self.mode!r}")
        if self.buffer_size is None and not (0.0 < self.compression <= 1.0):
            raise ValueError(
                f"hashed table '{name}': compression must be in (0, 1], got {self.compression}"
            )
        if self.buffer_size is not None and self.buffer_size <= 0:
            raise ValueError(f"hashed table '{name}': buffer_size must be positive, got {self.buffer_size}")
        if self.row_regions <= 0:
            raise ValueError(f"hashed table '{name}': row_regions must be positive")
        if self.mode == "block" and self.chunk_size and self.embedding_dim % self.chunk_size:
            raise ValueError(
                f"hashed table '{name}': chunk_size {self.chunk_size} must divide "
                f"embedding_dim {self.embedding_dim}"
            )
        if self.block_align < 0 or (self.mode == "block" and self.block_align
                                    and self.chunk % self.block_align):
            raise ValueError(
                f"hashed table '{name}': block_align {self.block_align} must divide the "
                f"chunk size {self.chunk} (or be 0 for the default)"
            )

    # --- derived layout ---
    @property
    def chunk(self) -> int:
        if self.mode == "element":
            return 1
        return self.chunk_size or math.gcd(self.embedding_dim, 32)

    @property
    def align(self) -> int:
        """Block starts are multiples of this many elements (1 in element mode)."""
        if self.mode == "element":
            return 1
        return self.block_align or math.gcd(self.chunk, 16)

    @property
    def rows_per_region(self) -> int:
        return -(-self.num_embeddings // self.row_regions)

    @property
    def slots(self) -> int:
        """Buffer rows per row region."""
        if self.buffer_size is not None:
            return max(1, self.buffer_size // (self.row_regions * self.embedding_dim))
        return max(1, round(self.compression * self.rows_per_region))

    @property
    def buffer_rows(self) -> int:
        return self.row_regions * self.slots

    @property
    def virtual_rows(self) -> int:
        """num_embeddings padded to whole regions: the id space TorchRec bucketizes."""
        return self.row_regions * self.rows_per_region

    def init_bounds(self) -> tuple:
        # TorchRec's default: U(-sqrt(1/n), sqrt(1/n)) of the *virtual* table.
        bound = math.sqrt(1.0 / self.num_embeddings)
        low = self.weight_init_min if self.weight_init_min is not None else -bound
        high = self.weight_init_max if self.weight_init_max is not None else bound
        return low, high

    def shard_layout(self, row_offset: int = 0, col_offset: int = 0) -> HashedShardLayout:
        """Layout of the shard whose buffer block starts at (row_offset, col_offset)."""
        if row_offset % self.slots or col_offset % self.chunk:
            raise ValueError(
                f"hashed table '{self.name}': a shard must start on a region boundary "
                f"(row offset {row_offset} vs {self.slots} slots per region, column "
                f"offset {col_offset} vs chunk {self.chunk})"
            )
        return HashedShardLayout(
            mode=MODES[self.mode],
            chunk=self.chunk,
            rows_per_region=self.rows_per_region,
            slots=self.slots,
            id_offset=(row_offset // self.slots) * self.rows_per_region,
            col_offset=col_offset,
            seed=self.seed,
            signed=self.signed,
            align=self.align,
        )

    # --- the table-kind protocol (torchrec_ext/modules/table_kind.py) ---
    def parameter_shape(self) -> tuple:
        return (self.buffer_rows, self.embedding_dim)

    def rw_id_space(self, block_rows: int, world_size: int) -> int:
        # A row-wise block of whole regions serves exactly those regions' ids.
        return (block_rows // self.slots) * self.rows_per_region * world_size

    def id_bounds(self) -> tuple:
        return (0, self.num_embeddings)

    def row_shard_unit(self) -> int:
        """Row-wise shards must hold whole regions: this many buffer rows."""
        return self.slots

    def col_shard_unit(self) -> int:
        return self.chunk

    def unsupported_sharding(self, sharding_type: str) -> Optional[str]:
        return None

    def state_names(self) -> List[str]:
        return ["weight"]

    def state_shape(self, name: str) -> tuple:
        return self.parameter_shape()

    def state_pieces(self, sharding_type: str, offsets, sizes) -> List[StatePiece]:
        return [StatePiece("weight", tuple(offsets), tuple(sizes))]

    def init_shard_(self, weight: torch.Tensor, row_offset: int = 0, col_offset: int = 0) -> torch.Tensor:
        low, high = self.init_bounds()
        return coord_uniform_(weight, row_offset, col_offset, self.seed, low, high)

    def init_piece_(self, weight: torch.Tensor, piece: StatePiece) -> torch.Tensor:
        return self.init_shard_(weight, *piece.offsets)

    def make_shard_state(self, pieces, offsets, sizes) -> HashedShardLayout:
        return self.shard_layout(*offsets)

    def pool_shard(self, layout, weights, values, offsets, per_sample_weights, pooling: int) -> torch.Tensor:
        return hashed_bag(weights[0], values, offsets, per_sample_weights, pooling, layout)

    # --- batched kernels (sharding/table_batch.py): one weight, the buffer, per shard ---
    @staticmethod
    def pool_batch(layouts, weights, values, offsets, psw, table_bags, poolings) -> List[torch.Tensor]:
        return hashed_bags(weights, values, offsets, psw, table_bags, poolings, layouts)

    @staticmethod
    def pool_batch_keep(layouts, weights, values, offsets, psw, table_bags, poolings):
        """pool_batch plus the block positions (the backward reads them instead of hashing)."""
        return hashed_bags_keep(weights, values, offsets, psw, table_bags, poolings, layouts)

    @staticmethod
    def backward_batch(layouts, grads, weights, values, offsets, psw, table_bags, poolings, need_psw, kept=None):
        gw, gpsw = hashed_bags_backward(grads, weights, values, offsets, psw, table_bags, poolings, layouts,
                                        need_psw, kept)
        return [[(None, g)] for g in gw], gpsw

    @staticmethod
    def sgd_batch_(layouts, weights, grads, values, offsets, psw, table_bags, poolings, lr, need_psw, kept=None):
        return hashed_bags_sgd_(weights, grads, values, offsets, psw, table_bags, poolings, layouts, lr, need_psw,
                                kept)


class HashedEmbeddingBagCollection(ExtEmbeddingBagCollection):
    """Drop-in `EmbeddingBagCollection` whose tables are hashed buffers.

    `embedding_bags[<table>].weight` is the buffer, [row_regions * slots, dim]. Train it
    with any torch optimizer (dense gradients of the buffer), or shard it with
    `torchrec_ext.sharding.get_sharders()` for fused optimizers.
    """

    config_type = HashedEmbeddingBagConfig
