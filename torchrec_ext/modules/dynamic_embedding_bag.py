"""Dynamic hashtable tables: unbounded int64 ids, a row created the first time an id is seen.

`DynamicEmbeddingBagCollection` is a drop-in `torchrec.EmbeddingBagCollection` (KJT in,
KeyedTensor out) whose tables are `DynamicRows`: a native hash index from id to row, rows
in blocks added as the table grows. In training mode unseen ids get a row initialised from
(key, column) alone, if the table's admission policy admits it; in eval mode nothing is
inserted and unseen ids read as the initializer's `eval_value`. With `fused_params` the
backward pass updates the touched rows and their per-row optimizer state in place, exactly
as the sharded kernels do; an eviction policy frees rows (see torchrec_ext.admission,
torchrec_ext.eviction).

State: `embedding_bags.<table>.bucket_<b>` for b < key_buckets, each a `KeyedRows` of the
keys whose hash falls in bucket b (values, optimizer state, metadata), and
`embedding_bags.<table>.step`. Row-wise plans give rank r the buckets with
b % world_size == r, so a checkpoint moves between world sizes bucket by bucket.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, data_type_to_dtype

from torchrec_ext.admission import AdmissionPolicy
from torchrec_ext.admission import as_policy as as_admission
from torchrec_ext.eviction import EvictionPolicy
from torchrec_ext.eviction import as_policy as as_eviction
from torchrec_ext.initializers import Initializer, torchrec_default
from torchrec_ext.modules.collection_base import ExtEmbeddingBagCollection, check_ids
from torchrec_ext.modules.dynamic_rows import DynamicRows, KeyedRows, bucket_of

# Index and bookkeeping bytes per row: two int64 index slots per key (the index stays at
# most half full) plus a free-list entry.
KEY_OVERHEAD_BYTES = 2 * 16 + 8
STORAGE_DTYPES = (DataType.FP32, DataType.FP16, DataType.BF16)


@dataclass
class DynamicEmbeddingBagConfig(EmbeddingBagConfig):
    """`EmbeddingBagConfig` of a dynamic table; `num_embeddings` is the planner's hint of
    expected rows, not a bound on ids (every int64 is a valid id).

    initial_capacity: rows allocated up front.
    max_capacity: most rows the table may hold (None: unbounded); a batch that needs more
        raises TableFullError and inserts nothing.
    block_size: rows per storage block (the unit of growth).
    initializer: from torchrec_ext.initializers (default: TorchRec's U(+-sqrt(1/num_embeddings))).
    shared_name: collections whose tables share a name share one set of rows.
    key_buckets: keys hash into this many buckets; a row-wise plan gives rank r the buckets
        b with b % world_size == r, and the state dict holds one entry per bucket (so a
        row-wise world may have at most key_buckets ranks).
    seed: init seed (default: from the shared name, else the table's name).
    admission: a torchrec_ext.admission policy (default AlwaysAdmit()).
    eviction: a torchrec_ext.eviction policy (default None: rows stay until erased);
        eviction_interval: run its expiry every this many training steps (0: on demand only).
    grad_reduce_by: "sum" (duplicate ids' gradients summed; TorchRec's convention, with the
        world-size division of sharded training) or "id" (averaged over the id's occurrences).
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

    dynamic = True  # class attribute: the sharding layer builds dynamic shards for these
    # Dynamic tables share a TorchRec lookup kernel, which looks up, pools and updates
    # them in batched calls (sharding/dynamic_batch.py). A class attribute, not a field.
    kernel_group = "<dynamic tables>"

    def __post_init__(self) -> None:
        name = self.name or "<unnamed>"
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
        if self.grad_reduce_by not in ("sum", "id"):
            raise ValueError(f"dynamic table '{name}': grad_reduce_by must be 'sum' or 'id', "
                             f"got {self.grad_reduce_by!r}")

    @property
    def storage_dtype(self) -> torch.dtype:
        return data_type_to_dtype(self.data_type)

    # --- what the planner and sharders need (see table_kind.py) ---
    def parameter_shape(self):
        return (max(self.num_embeddings, 1), self.embedding_dim)

    def rw_id_space(self, block_rows: int, world_size: int) -> int:
        return self.parameter_shape()[0]  # unused: row-wise routes keys by hash

    def id_bounds(self):
        return (None, None)

    def row_shard_unit(self) -> int:
        return 1

    def col_shard_unit(self) -> int:
        return 1

    def unsupported_sharding(self, sharding_type: str) -> Optional[str]:
        if sharding_type not in (ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value,
                                 ShardingType.COLUMN_WISE.value):
            return f"dynamic tables shard table-wise, row-wise or column-wise, not {sharding_type}"
        return None

    def planned_rows(self) -> int:
        """Rows the planner charges: max_capacity, else the larger of the hint and initial_capacity."""
        if self.max_capacity is not None:
            return self.max_capacity
        return max(self.num_embeddings, self.initial_capacity)

    def storage_bytes(self, sharding_type: str, sizes, optimizer_bytes_per_row: int) -> int:
        """Bytes one shard of `sizes` (rows, cols of the planner's view) holds at capacity."""
        elem = torch.empty(0, dtype=self.storage_dtype).element_size()
        share = sizes[0] / self.parameter_shape()[0] if sharding_type == ShardingType.ROW_WISE.value else 1.0
        rows = int(round(self.planned_rows() * share))
        return rows * (sizes[1] * elem + optimizer_bytes_per_row + KEY_OVERHEAD_BYTES)

    def new_rows(self, device, col_offset: int = 0, cols: Optional[int] = None,
                 trainable_blocks: bool = False, capacity_share: float = 1.0) -> DynamicRows:
        """Rows of a shard holding `cols` columns from `col_offset` and `capacity_share` of
        the table's keys (a row-wise shard: 1 / world size of its capacities)."""
        cols = self.embedding_dim if cols is None else cols
        initial = int(round(self.initial_capacity * capacity_share))
        cap = None if self.max_capacity is None else math.ceil(self.max_capacity * capacity_share)
        return DynamicRows(self.name, cols, self.storage_dtype, device, self.block_size, initial,
                           cap, self.initializer, self.seed, col_offset, trainable_blocks,
                           self.admission, self.eviction, self.eviction_interval)


# shared_name -> rows, per process (collections built in one process share rows by name)
_SHARED: Dict[tuple, DynamicRows] = {}


def shared_rows(cfg: DynamicEmbeddingBagConfig, signature: tuple, make) -> DynamicRows:
    """The rows registered under (shared_name, signature), created by `make` on first use."""
    if cfg.shared_name is None:
        return make()
    key = (cfg.shared_name,) + signature
    rows = _SHARED.get(key)
    if rows is None:
        rows = _SHARED[key] = make()
        rows.shared_config = cfg
    else:
        other = rows.shared_config
        same = (other.embedding_dim, other.data_type, other.block_size, other.initializer, other.seed,
                other.max_capacity) == (cfg.embedding_dim, cfg.data_type, cfg.block_size,
                                        cfg.initializer, cfg.seed, cfg.max_capacity)
        if not same:
            raise ValueError(f"table '{cfg.name}': shared_name '{cfg.shared_name}' is already used by "
                             f"table '{other.name}' with another dim, dtype, block size, capacity, "
                             "initializer or seed")
    return rows


def release_shared(shared_name: Optional[str] = None) -> None:
    """Forgets shared rows (all, or one name): later collections start new ones."""
    for key in [k for k in _SHARED if shared_name is None or k[0] == shared_name]:
        del _SHARED[key]


def bucket_entries(entry: KeyedRows, buckets: Sequence[int], num_buckets: int) -> Dict[int, KeyedRows]:
    """The entry split by key bucket (every listed bucket, empty ones included), on CPU."""
    b = bucket_of(entry.keys, num_buckets)
    pending = entry.pending_keys
    pb = bucket_of(pending, num_buckets) if pending is not None else None
    out = {}
    for k in buckets:
        e = entry.select(b == k)
        if pending is not None:
            e.pending_keys, e.pending_counts = pending[pb == k], entry.pending_counts[pb == k]
        out[k] = e.cpu()
    return out


def bucket_key(prefix: str, b: int) -> str:
    return f"{prefix}bucket_{b}"


class DynamicTable(nn.Module):
    """Holder of one unsharded dynamic table: its rows, and its blocks as parameters
    (they get dense gradients only when the collection trains without fused_params)."""

    def __init__(self, cfg: DynamicEmbeddingBagConfig, device, trainable: bool) -> None:
        super().__init__()
        self.config = cfg
        self.steps = 0  # training lookups so far: the step stamped on rows
        self.rows = shared_rows(cfg, ("unsharded", str(device)),
                                lambda: cfg.new_rows(device, trainable_blocks=trainable))
        self.adopt_blocks()

    def adopt_blocks(self) -> None:
        """Registers blocks added since the last call as parameters (trainable tables)."""
        for i in range(len(self._parameters), len(self.rows.blocks)):
            block = self.rows.blocks[i]
            if not isinstance(block, nn.Parameter):
                return
            self.register_parameter(f"block_{i}", block)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        n = self.config.key_buckets
        for b, entry in bucket_entries(self.rows.export(), range(n), n).items():
            destination[bucket_key(prefix, b)] = entry
        destination[prefix + "step"] = torch.tensor(self.steps)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        entries = load_buckets(self.rows, self.config, state_dict, prefix, range(self.config.key_buckets))
        if prefix + "step" in state_dict:
            self.steps = int(state_dict[prefix + "step"])
        if strict:
            missing_keys.extend(bucket_key(prefix, b) for b in range(self.config.key_buckets) if b not in entries)
        for k in state_dict:
            rest = k[len(prefix):]
            if k.startswith(prefix) and not rest.startswith(("bucket_", "block_")) and rest != "step":
                unexpected_keys.append(k)


def load_buckets(rows: DynamicRows, cfg: DynamicEmbeddingBagConfig, state_dict: Mapping[str, Any],
                 prefix: str, buckets) -> Dict[int, KeyedRows]:
    """Replaces `rows` with the given buckets' entries found in state_dict (the columns
    `rows` holds of each); returns the entries used."""
    entries = {}
    for b in buckets:
        v = state_dict.get(bucket_key(prefix, b))
        if v is None:
            continue
        if not isinstance(v, KeyedRows):
            raise TypeError(f"table '{cfg.name}': {bucket_key(prefix, b)} is a {type(v).__name__}, "
                            "not KeyedRows")
        if v.values.dim() != 2 or v.values.shape[1] != cfg.embedding_dim:
            raise ValueError(f"table '{cfg.name}': {bucket_key(prefix, b)} holds rows of shape "
                             f"{tuple(v.values.shape)}, the table has dim {cfg.embedding_dim}")
        entries[b] = v
    if entries:
        rows.clear()
        for v in entries.values():
            rows.load(v, rows.column_slice(cfg.embedding_dim))
    return entries


class DynamicEmbeddingBagCollection(ExtEmbeddingBagCollection):
    """Drop-in EmbeddingBagCollection of dynamic tables.

    fused_params: as for TorchRec's sharder ({"optimizer": EmbOptimType.EXACT_SGD,
    "learning_rate": ...}); the backward pass then updates the touched rows in place.
    Without it the blocks are parameters with dense gradients (blocks added later are new
    parameters, so build the optimizer after warm-up or preallocate initial_capacity).
    """

    config_type = DynamicEmbeddingBagConfig

    def __init__(self, tables: Sequence[DynamicEmbeddingBagConfig], is_weighted: bool = False,
                 device: Optional[torch.device] = None,
                 fused_params: Optional[Mapping[str, Any]] = None) -> None:
        self._fused_params = dict(fused_params) if fused_params is not None else None
        super().__init__(tables, is_weighted=is_weighted, device=device)

    def _build_tables(self) -> None:
        from torchrec_ext.sharding.dynamic_optim import DynamicFusedUpdate

        trainable = self._fused_params is None
        self._tables: List[DynamicTable] = []
        for t in self._embedding_bag_configs:
            holder = DynamicTable(t, self._device, trainable)
            self.embedding_bags[t.name] = holder
            self._tables.append(holder)
        self._fused = None
        if self._fused_params is not None:
            cfgs = self._embedding_bag_configs
            self._fused = DynamicFusedUpdate(
                {self._optim_key(t.name): h.rows for t, h in zip(cfgs, self._tables)},
                self._fused_params, f"{type(self).__name__}",
                reduce_by={self._optim_key(t.name): t.grad_reduce_by for t in cfgs})

    @staticmethod
    def _optim_key(name: str) -> str:
        return f"embedding_bags.{name}.rows"

    def reset_parameters(self) -> None:
        for h in self._tables:
            h.rows.clear()
            h.steps = 0

    @property
    def fused_optimizer(self):
        """The in-backward optimizer (None without fused_params)."""
        return self._fused

    # --- per table: what it holds, its lifecycle ---
    def table_size(self, name: str) -> int:
        return len(self._holder(name).rows)

    def keys(self, name: str) -> torch.Tensor:
        return self._holder(name).rows.keys()

    def stats(self, name: str) -> Dict[str, float]:
        """size, capacity, admitted, rejected, evicted, load (size / capacity), ..."""
        return self._holder(name).rows.statistics()

    def evict(self, name: Optional[str] = None) -> int:
        """Runs eviction now (one table, or all); returns the rows removed."""
        names = [name] if name is not None else [t.name for t in self._embedding_bag_configs]
        return sum(self._holder(n).rows.evict() for n in names)

    def export_delta(self, since_step: int) -> Dict[str, KeyedRows]:
        """Per table: the rows changed at or after training step `since_step` (values,
        optimizer state, metadata) and the keys removed since then (`deleted`)."""
        return {t.name: h.rows.export(since_step).cpu() for t, h in zip(self._embedding_bag_configs, self._tables)}

    def import_delta(self, delta: Mapping[str, KeyedRows]) -> None:
        """Applies an `export_delta` on top of this table's rows."""
        for name, entry in delta.items():
            self._holder(name).rows.load(entry)

    def _holder(self, name: str) -> "DynamicTable":
        for t, h in zip(self._embedding_bag_configs, self._tables):
            if t.name == name:
                return h
        raise KeyError(f"{type(self).__name__}: no table named '{name}'")

    def forward(self, features):
        out = super().forward(features)
        if self.training:
            for h in self._tables:
                h.steps += 1
        return out

    def _pool_table(self, index, values, offsets, weights):
        config = self._embedding_bag_configs[index]
        check_ids(config.name, values, None, None)
        holder = self._tables[index]
        looked = holder.rows.lookup(values.long(), insert=self.training, step=holder.steps)
        holder.adopt_blocks()
        w = weights.float() if weights is not None else None
        if self._fused is not None:
            return self._fused.lookup(self._optim_key(config.name), looked, offsets.long(), w, self._pooling[index])
        return holder.rows.pool(looked, offsets.long(), w, self._pooling[index])
