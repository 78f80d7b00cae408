"""QR / compositional tables (Shi et al., KDD 2020): a unique vector per id from small tables.

A table of n ids is covered by k complementary partitions; partition p maps id x to row
(x // div_p) % mod_p of a small table (mod_p = 0: no modulo). Every id gets a distinct
tuple of rows, and its vector combines those rows per id, before pooling:
  "mult"   element-wise product      (all partition dims = embedding_dim)
  "add"    sum                       (all partition dims = embedding_dim)
  "concat" concatenation             (partition dims add up to embedding_dim)
Partitions (64-bit integer math, exact for every int64 id):
  "qr"             quotient x // m (ceil(n/m) rows), then remainder x % m (m rows)
  "generalized_qr" factors m_1..m_k, prod >= n: digit j of x in mixed radix, the last
                   digit (a quotient) varies slowest
  "crt"            pairwise-coprime moduli m_1..m_k, prod >= n: x % m_j

Sharding: the planner sees a [rows of the slowest-varying partition, embedding_dim] view.
Row-wise plans cut that partition by rows (a contiguous id block reads a contiguous row
block) and replicate the others, whose gradients are summed across ranks. Column-wise
plans cut every partition's columns. CRT has no slowest-varying partition, so no
row-wise plan.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_ext.modules.collection_base import ExtEmbeddingBagCollection
from torchrec_ext.modules.table_kind import StatePiece
from torchrec_ext.ops import QRShardLayout, coord_uniform_, qr_bag, qr_bags, qr_bags_backward
from torchrec_ext.ops.qr import OPS

PARTITIONS = ("qr", "generalized_qr", "crt")
MAX_PARTITIONS = 8  # csrc/qr_layout.h


@dataclass(frozen=True)
class Partition:
    divisor: int
    modulus: int  # 0: a quotient (no modulo)
    rows: int
    dim: int
    out_col: int  # first output column (concat); 0 for mult/add

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        q = torch.div(ids, self.divisor, rounding_mode="floor")
        return q if self.modulus == 0 else q % self.modulus


@dataclass
class QREmbeddingBagConfig(EmbeddingBagConfig):
    """`EmbeddingBagConfig` plus the partitions and how their vectors combine.

    partition: "qr", "generalized_qr" or "crt".
    num_collisions: m of "qr" (0 picks ceil(sqrt(num_embeddings)), the smallest tables).
    factors: the factors ("generalized_qr") or pairwise-coprime moduli ("crt").
    operation: "mult" (default), "add" or "concat".
    partition_dims: per-partition dims for "concat" (default: embedding_dim split evenly).
    seed: init seed (default: derived from the table's name).
    """

    # QR tables of a rank share a TorchRec lookup kernel, which serves them in one
    # batched call (sharding/table_batch.py). A class attribute, not a field.
    kernel_group = "<qr tables>"

    partition: str = "qr"
    num_collisions: int = 0
    factors: List[int] = field(default_factory=list)
    operation: str = "mult"
    partition_dims: Optional[List[int]] = None
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        self.partitions()  # validates

    def _fail(self, msg: str) -> None:
        raise ValueError(f"QR table '{self.name or '<unnamed>'}': {msg}")

    # --- the partitions ---
    def partitions(self) -> List[Partition]:
        n, D = self.num_embeddings, self.embedding_dim
        if n <= 0 or D <= 0:
            self._fail("num_embeddings and embedding_dim must be positive")
        if self.operation not in OPS:
            self._fail(f"operation must be one of {sorted(OPS)}, got {self.operation!r}")
        if self.partition == "qr":
            m = self.num_collisions or math.isqrt(n - 1) + 1
            if m < 1:
                self._fail(f"num_collisions must be >= 1, got {self.num_collisions}")
            shape = [(m, 0, -(-n // m)), (1, m, min(m, n))]
        elif self.partition in ("generalized_qr", "crt"):
            fs = list(self.factors)
            if not fs or any(int(f) < 1 for f in fs):
                self._fail(f"{self.partition} needs factors >= 1, got {fs}")
            if math.prod(fs) < n:
                self._fail(f"the product of factors {fs} is {math.prod(fs)} < num_embeddings {n}, "
                           "so two ids would share every row")
            if self.partition == "crt":
                for i in range(len(fs)):
                    for j in range(i + 1, len(fs)):
                        if math.gcd(fs[i], fs[j]) != 1:
                            self._fail(f"crt moduli must be pairwise coprime; {fs[i]} and {fs[j]} "
                                       f"share the factor {math.gcd(fs[i], fs[j])}")
                shape = [(1, f, min(f, n)) for f in fs]
            else:
                shape, div = [], 1
                for j, f in enumerate(fs):
                    last = j == len(fs) - 1
                    shape.append((div, 0 if last else f, -(-n // div) if last else min(f, -(-n // div))))
                    div *= f
        else:
            self._fail(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        k = len(shape)
        if k > MAX_PARTITIONS:
            self._fail(f"at most {MAX_PARTITIONS} partitions, got {k}")
        dims = self._dims(k)
        cols = [sum(dims[:p]) if self.operation == "concat" else 0 for p in range(k)]
        return [Partition(d, m, r, dims[p], cols[p]) for p, (d, m, r) in enumerate(shape)]

    def _dims(self, k: int) -> List[int]:
        D = self.embedding_dim
        if self.operation != "concat":
            if self.partition_dims is not None and any(d != D for d in self.partition_dims):
                self._fail(f"partition_dims {self.partition_dims} apply to 'concat' only; "
                           f"'{self.operation}' uses embedding_dim ({D}) for every partition")
            return [D] * k
        if self.partition_dims is None:
            if D % k:
                self._fail(f"concat of {k} partitions needs partition_dims (embedding_dim {D} "
                           f"is not a multiple of {k})")
            return [D // k] * k
        dims = list(self.partition_dims)
        if len(dims) != k or any(d <= 0 for d in dims) or sum(dims) != D:
            self._fail(f"partition_dims {dims} must be {k} positive dims adding up to "
                       f"embedding_dim {D}")
        return dims

    @property
    def sharded_partition(self) -> Optional[int]:
        """The partition whose rows follow contiguous ids (None for CRT)."""
        if self.partition == "crt":
            return None
        return 0 if self.partition == "qr" else len(self.partitions()) - 1

    def table_bytes(self, element_size: int = 4) -> int:
        return sum(p.rows * p.dim for p in self.partitions()) * element_size

    def init_bounds(self) -> Tuple[float, float]:
        """Per-partition U(-b, b) so composed elements have TorchRec's default variance.

        TorchRec draws U(-a, a), a = sqrt(1/n): variance a^2/3. A sum of k U(-b, b)
        has k b^2/3, so b = sqrt(1/(k n)); a product has (b^2/3)^k, so
        b = sqrt(3) (3 n)^(-1/(2k)); a concat keeps a. weight_init_min/max override.
        """
        n, k = self.num_embeddings, len(self.partitions())
        if self.operation == "add":
            b = math.sqrt(1.0 / (k * n))
        elif self.operation == "mult":
            b = math.sqrt(3.0) * (3.0 * n) ** (-1.0 / (2 * k))
        else:
            b = math.sqrt(1.0 / n)
        low = self.weight_init_min if self.weight_init_min is not None else -b
        high = self.weight_init_max if self.weight_init_max is not None else b
        return low, high

    def _seed(self, p: int) -> int:
        base = self.seed if self.seed is not None else zlib.crc32(self.name.encode())
        return (base * 1_000_003 + p * 7919) & 0x7FFFFFFF

    # --- the table-kind protocol (torchrec_ext/modules/table_kind.py) ---
    def parameter_shape(self) -> tuple:
        s = self.sharded_partition
        return (self.partitions()[0 if s is None else s].rows, self.embedding_dim)

    def rw_id_space(self, block_rows: int, world_size: int) -> int:
        return self.partitions()[self.sharded_partition].divisor * block_rows * world_size

    def id_bounds(self) -> tuple:
        return (0, self.num_embeddings)

    def row_shard_unit(self) -> int:
        return 1

    def col_shard_unit(self) -> int:
        return 1

    def unsupported_sharding(self, sharding_type: str) -> Optional[str]:
        if sharding_type == ShardingType.ROW_WISE.value and self.sharded_partition is None:
            return "row-wise needs a partition that follows contiguous ids; crt has none"
        return None

    def state_names(self) -> List[str]:
        return [f"weight_{p}" for p in range(len(self.partitions()))]

    def state_shape(self, name: str) -> tuple:
        part = self.partitions()[int(name.rsplit("_", 1)[1])]
        return (part.rows, part.dim)

    def state_pieces(self, sharding_type: str, offsets, sizes) -> List[StatePiece]:
        (r0, c0), (rs, cs) = offsets, sizes
        row_wise = sharding_type == ShardingType.ROW_WISE.value
        pieces = []
        for p, part in enumerate(self.partitions()):
            if self.operation == "concat":
                lo, hi = max(c0, part.out_col), min(c0 + cs, part.out_col + part.dim)
                if lo >= hi:
                    continue  # this column shard holds none of the partition's columns
                col, width = lo - part.out_col, hi - lo
            else:
                col, width = c0, cs
            if row_wise and p == self.sharded_partition:
                pieces.append(StatePiece(f"weight_{p}", (r0, col), (rs, width)))
            else:
                pieces.append(StatePiece(f"weight_{p}", (0, col), (part.rows, width), replicated=row_wise))
        return pieces

    def init_piece_(self, weight: torch.Tensor, piece: StatePiece) -> torch.Tensor:
        low, high = self.init_bounds()
        p = int(piece.name.rsplit("_", 1)[1])
        return coord_uniform_(weight, piece.offsets[0], piece.offsets[1], self._seed(p), low, high)

    def make_shard_state(self, pieces: Sequence[StatePiece], offsets, sizes) -> QRShardLayout:
        parts = self.partitions()
        idx = [int(pc.name.rsplit("_", 1)[1]) for pc in pieces]
        s = self.sharded_partition
        id_offset = offsets[0] * parts[s].divisor if s is not None else 0
        return QRShardLayout(
            op=OPS[self.operation],
            divisors=tuple(parts[p].divisor for p in idx),
            moduli=tuple(parts[p].modulus for p in idx),
            row_starts=tuple(pc.offsets[0] for pc in pieces),
            out_cols=tuple(parts[p].out_col + pc.offsets[1] - offsets[1] if self.operation == "concat" else 0
                           for p, pc in zip(idx, pieces)),
            id_offset=id_offset,
            out_dim=sizes[1],
        )

    def pool_shard(self, layout, weights, values, offsets, per_sample_weights, pooling: int) -> torch.Tensor:
        return qr_bag(weights, values, offsets, per_sample_weights, pooling, layout)

    # --- batched kernels (sharding/table_batch.py): one weight per partition piece ---
    @staticmethod
    def pool_batch(layouts, weights, values, offsets, psw, table_bags, poolings) -> List[torch.Tensor]:
        return qr_bags(weights, values, offsets, psw, table_bags, poolings, layouts)

    @staticmethod
    def backward_batch(layouts, grads, weights, values, offsets, psw, table_bags, poolings, need_psw):
        rows, piece_grads, gpsw = qr_bags_backward(grads, weights, values, offsets, psw, table_bags, poolings,
                                                   layouts, need_psw)
        per_shard, at = [], 0
        for layout in layouts:
            k = len(layout.divisors)
            per_shard.append(list(zip(rows[at:at + k], piece_grads[at:at + k])))
            at += k
        return per_shard, gpsw


class QREmbeddingBagCollection(ExtEmbeddingBagCollection):
    """Drop-in `EmbeddingBagCollection` whose tables are QR / compositional tables.

    `embedding_bags[<table>].weight_<p>` is partition p's table, [rows_p, dim_p]. Train
    with any torch optimizer (dense gradients, zero outside the rows a batch touched), or
    shard with `torchrec_ext.sharding.get_sharders()` for fused optimizers.
    """

    config_type = QREmbeddingBagConfig
