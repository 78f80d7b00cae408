"""`QREmbeddingBagConfig`: QR / compositional tables (Shi et al., KDD 2020), a unique
vector per id from small tables, and their partitions.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_ext.modules.config_checks import check_fields
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

    Args:
        partition: "qr", "generalized_qr" or "crt".
        num_collisions: m of "qr" (0 picks ceil(sqrt(num_embeddings)), the smallest tables).
        factors: the factors ("generalized_qr") or pairwise-coprime moduli ("crt").
        operation: "mult" (default), "add" or "concat".
        partition_dims: per-partition dims for "concat" (default: embedding_dim split evenly).
        seed: init seed (default: derived from the table's name).

    Example:
        >>> cfg = QREmbeddingBagConfig(name="item", num_embeddings=1_000_000, embedding_dim=16,
        ...                            feature_names=["item_id"], num_collisions=1000)
        >>> [(p.rows, p.dim) for p in cfg.partitions()]
        [(1000, 16), (1000, 16)]
    """

    partition: str = "qr"
    num_collisions: int = 0
    factors: List[int] = field(default_factory=list)
    operation: str = "mult"
    partition_dims: Optional[List[int]] = None
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        check_fields(self, f"QR table '{self.name or '<unnamed>'}'", {
            "partition": str, "num_collisions": int, "factors": ("list", int), "operation": str,
            "partition_dims": ("optional", ("list", int)), "seed": ("optional", int)})
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
