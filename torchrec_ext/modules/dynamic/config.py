"""`DynamicEmbeddingBagConfig`: a table of unbounded int64 ids, a row per id seen."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional

import torch
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, data_type_to_dtype

from torchrec_ext.modules.config_checks import check_fields
from torchrec_ext.modules.dynamic.admission import AdmissionPolicy
from torchrec_ext.modules.dynamic.admission import as_policy as as_admission
from torchrec_ext.modules.dynamic.eviction import EvictionPolicy
from torchrec_ext.modules.dynamic.eviction import as_policy as as_eviction
from torchrec_ext.modules.dynamic.initializers import Initializer, torchrec_default

STORAGE_DTYPES = (DataType.FP32, DataType.FP16, DataType.BF16)


@dataclass
class DynamicEmbeddingBagConfig(EmbeddingBagConfig):
    """`EmbeddingBagConfig` of a dynamic table; `num_embeddings` is the planner's hint of
    expected rows, not a bound on ids (every int64 is a valid id).

    Args:
        initial_capacity: rows allocated up front.
        max_capacity: most rows the table may hold (None: unbounded); a batch that needs
            more raises TableFullError and inserts nothing (unless eviction makes room).
        block_size: rows per storage block (the unit of growth).
        initializer: from `torchrec_ext.initializers` (default: TorchRec's
            U(+-sqrt(1/num_embeddings))).
        shared_name: collections whose tables share a name share one set of rows.
        key_buckets: keys hash into this many buckets; a row-wise plan gives rank r the
            buckets b with b % world_size == r, and the state dict holds one entry per
            bucket (so a row-wise world may have at most key_buckets ranks).
        seed: init seed (default: from the shared name, else the table's name).
        admission: a `torchrec_ext.admission` policy (default AlwaysAdmit()).
        eviction: a `torchrec_ext.eviction` policy (default None: rows stay until erased).
        eviction_interval: run the eviction policy's expiry every this many training steps
            (0: on demand only).
        grad_reduce_by: "sum" (duplicate ids' gradients summed; TorchRec's convention, with
            the world-size division of sharded training) or "id" (averaged over the id's
            occurrences).
        delta_window: training steps for which the keys erased are kept, so that
            `export_delta(since_step)` can list them for any since_step within that many
            steps of the current one (older: ValueError). Bounds the log's memory.
        on_full: what a training batch does when it brings more new ids than `max_capacity`
            can take, after the eviction policy has freed every row the batch does not use:
            "raise" (`TableFullError`, nothing inserted) or "reject" (the ids that fit get rows,
            most frequent in the batch first; the others read as their initial values and
            get no update, as ids the admission policy has not admitted yet).

    Example:
        >>> cfg = DynamicEmbeddingBagConfig(name="query", num_embeddings=1_000_000, embedding_dim=16,
        ...                                 feature_names=["query_hash"], max_capacity=2_000_000)
        >>> cfg.storage_dtype
        torch.float32
    """

    initial_capacity: int = 0
    max_capacity: Optional[int] = None
    block_size: int = 4096
    initializer: Optional[Initializer] = None
    shared_name: Optional[str] = None
    key_buckets: int = 64
    seed: Optional[int] = None
    admission: Optional[AdmissionPolicy] = None
    eviction: Optional[EvictionPolicy] = None
    eviction_interval: int = 0
    grad_reduce_by: str = "sum"
    on_full: str = "raise"
    delta_window: int = 10_000

    def __post_init__(self) -> None:
        name = self.name or "<unnamed>"
        check_fields(self, f"dynamic table '{name}'", {
            "initial_capacity": int, "max_capacity": ("optional", int), "block_size": int,
            "shared_name": ("optional", str), "key_buckets": int, "seed": ("optional", int),
            "eviction_interval": int, "grad_reduce_by": str, "on_full": str, "delta_window": int})
        if self.embedding_dim <= 0:
            raise ValueError(f"dynamic table '{name}': embedding_dim must be positive")
        if self.initial_capacity < 0 or self.block_size <= 0 or self.key_buckets <= 0:
            raise ValueError(f"dynamic table '{name}': initial_capacity must be >= 0, block_size and "
                             "key_buckets positive")
        if self.max_capacity is not None and self.max_capacity < max(self.initial_capacity, 1):
            raise ValueError(f"dynamic table '{name}': max_capacity {self.max_capacity} is below "
                             f"initial_capacity {self.initial_capacity}")
        if self.data_type not in STORAGE_DTYPES:
            raise ValueError(f"dynamic table '{name}': data_type {self.data_type} is not supported "
                             "(FP32, FP16 or BF16 storage)")
        if self.initializer is None:
            self.initializer = torchrec_default(self.num_embeddings)
        if not isinstance(self.initializer, Initializer):
            raise TypeError(f"dynamic table '{name}': initializer must come from torchrec_ext.initializers")
        if self.seed is None:
            self.seed = zlib.crc32((self.shared_name or self.name).encode()) & 0x7FFFFFFF
        self.admission = as_admission(self.admission)
        self.eviction = as_eviction(self.eviction)
        if self.eviction_interval < 0:
            raise ValueError(f"dynamic table '{name}': eviction_interval must be >= 0")
        if self.delta_window < 1:
            raise ValueError(f"dynamic table '{name}': delta_window must be >= 1, got {self.delta_window}")
        if self.grad_reduce_by not in ("sum", "id"):
            raise ValueError(f"dynamic table '{name}': grad_reduce_by must be 'sum' or 'id', "
                             f"got {self.grad_reduce_by!r}")
        if self.on_full not in ("raise", "reject"):
            raise ValueError(f"dynamic table '{name}': on_full must be 'raise' or 'reject', got {self.on_full!r}")

    @property
    def storage_dtype(self) -> torch.dtype:
        return data_type_to_dtype(self.data_type)
