"""`HashedEmbeddingBagConfig`: a virtual [num_embeddings, dim] table backed by a compressed
buffer, and the buffer's geometry.

Element mode (HashedNets): element (id, j) reads buffer[h(id, j)], optionally times a
sign hash. Block mode (ROBE-Z): each block of Z consecutive elements of a row reads Z
consecutive buffer elements from a hashed offset (circular within its region). Offsets
are multiples of `block_align` elements: 16 fp32 columns start a cache line, so a block of
32 touches 2 lines instead of 3 (1 gives the paper's any offset).

The buffer is a [row_regions * slots, dim] matrix. Ids are cut into `row_regions`
contiguous ranges; range r owns buffer rows [r * slots, (r + 1) * slots). Columns are
regions of their own (one column in element mode, Z columns in block mode). No id
reaches outside its region, which is what lets a plan cut the buffer (see kind.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_ext.modules.config_checks import check_fields

MODES = {"element": 0, "block": 1}


@dataclass
class HashedEmbeddingBagConfig(EmbeddingBagConfig):
    """`EmbeddingBagConfig` plus the memory budget of a hashed table.

    Args:
        compression: buffer size / (num_embeddings x embedding_dim), in (0, 1].
        buffer_size: explicit buffer size in elements (overrides compression).
        mode: "block" (ROBE-Z, default) or "element" (HashedNets).
        chunk_size: Z of block mode; 0 picks gcd(embedding_dim, 32).
        block_align: block mode: a block starts at a multiple of this many elements of its
            region; must divide Z. 0 picks gcd(Z, 16) (a 64-byte cache line of fp32); 1 lets
            a block start anywhere (ROBE-Z as published).
        seed: hash (and init) seed; two tables with different seeds share nothing.
        signed: multiply each element (element mode) or block (block mode) by a +-1 hash.
        row_regions: independent id ranges; row-wise world sizes must divide it.

    Example:
        >>> cfg = HashedEmbeddingBagConfig(name="user", num_embeddings=1_000_000, embedding_dim=64,
        ...                                feature_names=["user_id"], compression=0.01)
        >>> cfg.buffer_rows, cfg.chunk
        (10000, 32)
    """

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
        check_fields(self, f"hashed table '{name}'", {
            "compression": float, "buffer_size": ("optional", int), "mode": str,
            "chunk_size": int, "block_align": int, "seed": int, "signed": bool,
            "row_regions": int})
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
        if self.chunk_size < 0:
            raise ValueError(f"hashed table '{name}': chunk_size must be >= 0 (0 picks the default)")
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

    # --- the buffer's geometry, derived from the fields ---
    @property
    def chunk(self) -> int:
        """Columns of a column region: Z in block mode, 1 in element mode."""
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
