"""`QRTableKind`: how a QR table's partition tables are planned, cut, initialised, pooled.

The planner sees a [rows of the slowest-varying partition, embedding_dim] view. Row-wise
plans cut that partition by rows (a contiguous id block reads a contiguous row block) and
replicate the others, whose gradients are summed across ranks. Column-wise plans cut every
partition's columns (concat: each partition's own columns). CRT has no slowest-varying
partition, so no row-wise plan.
"""

from __future__ import annotations

import math
import zlib
from typing import List, Optional, Sequence, Tuple

import torch
from torchrec.distributed.types import ShardingType

from torchrec_ext.modules.qr.config import QREmbeddingBagConfig
from torchrec_ext.modules.table_kind import FixedStateKind, StatePiece
from torchrec_ext.ops import QRShardLayout, coord_uniform_, qr_bags, qr_bags_backward
from torchrec_ext.ops.qr import OPS


def init_bounds(cfg: QREmbeddingBagConfig) -> Tuple[float, float]:
    """Per-partition U(-b, b) so composed elements have TorchRec's default variance.

    TorchRec draws U(-a, a), a = sqrt(1/n): variance a^2/3. A sum of k U(-b, b) has
    k b^2/3, so b = sqrt(1/(k n)); a product has (b^2/3)^k, so b = sqrt(3) (3 n)^(-1/(2k));
    a concat keeps a. weight_init_min / weight_init_max override.
    """
    n, k = cfg.num_embeddings, len(cfg.partitions())
    if cfg.operation == "add":
        b = math.sqrt(1.0 / (k * n))
    elif cfg.operation == "mult":
        b = math.sqrt(3.0) * (3.0 * n) ** (-1.0 / (2 * k))
    else:
        b = math.sqrt(1.0 / n)
    low = cfg.weight_init_min if cfg.weight_init_min is not None else -b
    high = cfg.weight_init_max if cfg.weight_init_max is not None else b
    return low, high


def partition_seed(cfg: QREmbeddingBagConfig, p: int) -> int:
    """Init seed of partition p's table (from `seed`, else from the table's name)."""
    base = cfg.seed if cfg.seed is not None else zlib.crc32(cfg.name.encode())
    return (base * 1_000_003 + p * 7919) & 0x7FFFFFFF


def _partition_index(name: str) -> int:
    return int(name.rsplit("_", 1)[1])  # "weight_<p>"


def shard_layout(cfg: QREmbeddingBagConfig, pieces: Sequence[StatePiece], offsets, sizes) -> QRShardLayout:
    """How a shard's partition pieces make its output columns."""
    parts = cfg.partitions()
    idx = [_partition_index(pc.name) for pc in pieces]
    s = cfg.sharded_partition
    return QRShardLayout(
        op=OPS[cfg.operation],
        divisors=tuple(parts[p].divisor for p in idx),
        moduli=tuple(parts[p].modulus for p in idx),
        row_starts=tuple(pc.offsets[0] for pc in pieces),
        out_cols=tuple(parts[p].out_col + pc.offsets[1] - offsets[1] if cfg.operation == "concat" else 0
                       for p, pc in zip(idx, pieces)),
        id_offset=offsets[0] * parts[s].divisor if s is not None else 0,
        out_dim=sizes[1],
    )


class QRTableKind(FixedStateKind):
    """State tensors "weight_<p>": partition p's table, [rows_p, dim_p]."""

    def kernel_group(self, config) -> Optional[str]:
        return "<qr tables>"

    def parameter_shape(self, config):
        s = config.sharded_partition
        return (config.partitions()[0 if s is None else s].rows, config.embedding_dim)

    def id_bounds(self, config):
        return (0, config.num_embeddings)

    def rw_id_space(self, config, block_rows, world_size):
        return config.partitions()[config.sharded_partition].divisor * block_rows * world_size

    def unsupported_sharding(self, config, sharding_type):
        if sharding_type == ShardingType.ROW_WISE.value and config.sharded_partition is None:
            return "row-wise needs a partition that follows contiguous ids; crt has none"
        return None

    def state_names(self, config) -> List[str]:
        return [f"weight_{p}" for p in range(len(config.partitions()))]

    def state_shape(self, config, name):
        part = config.partitions()[_partition_index(name)]
        return (part.rows, part.dim)

    def state_pieces(self, config, sharding_type, offsets, sizes) -> List[StatePiece]:
        (r0, c0), (rs, cs) = offsets, sizes
        row_wise = sharding_type == ShardingType.ROW_WISE.value
        pieces = []
        for p, part in enumerate(config.partitions()):
            if config.operation == "concat":
                lo, hi = max(c0, part.out_col), min(c0 + cs, part.out_col + part.dim)
                if lo >= hi:
                    continue  # this column shard holds none of the partition's columns
                col, width = lo - part.out_col, hi - lo
            else:
                col, width = c0, cs
            if row_wise and p == config.sharded_partition:
                pieces.append(StatePiece(f"weight_{p}", (r0, col), (rs, width)))
            else:
                pieces.append(StatePiece(f"weight_{p}", (0, col), (part.rows, width), replicated=row_wise))
        return pieces

    def init_piece_(self, config, tensor, piece) -> torch.Tensor:
        low, high = init_bounds(config)
        seed = partition_seed(config, _partition_index(piece.name))
        return coord_uniform_(tensor, piece.offsets[0], piece.offsets[1], seed, low, high)

    def make_shard_state(self, config, pieces, offsets, sizes) -> QRShardLayout:
        return shard_layout(config, pieces, offsets, sizes)

    def pool_batch(self, states, weights, values, offsets, psw, table_bags, poolings):
        return qr_bags(weights, values, offsets, psw, table_bags, poolings, states)

    def backward_batch(self, states, grads, weights, values, offsets, psw, table_bags, poolings, need_psw,
                       kept=None):
        rows, piece_grads, gpsw = qr_bags_backward(grads, weights, values, offsets, psw, table_bags, poolings,
                                                   states, need_psw)
        per_shard, at = [], 0
        for layout in states:
            k = len(layout.divisors)
            per_shard.append(list(zip(rows[at:at + k], piece_grads[at:at + k])))
            at += k
        return per_shard, gpsw
