"""`DynamicEmbeddingBagCollection`: the drop-in EmbeddingBagCollection of dynamic tables.

Its tables are `DynamicRows`: a native hash index from id to row, rows in blocks added as
the table grows. In training mode unseen ids get a row initialised from (key, column)
alone, if the table's admission policy admits it; in eval mode nothing is inserted and
unseen ids read as the initializer's `eval_value`. With `fused_params` the backward pass
updates the touched rows and their per-row optimizer state in place, exactly as the
sharded kernels do; an eviction policy frees rows.

State: `embedding_bags.<table>.bucket_<b>` for b < key_buckets, each a `KeyedRows` of the
keys whose hash falls in bucket b (values, optimizer state, metadata), and
`embedding_bags.<table>.step`. Row-wise plans give rank r the buckets with
b % world_size == r, so a checkpoint moves between world sizes bucket by bucket.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from torchrec_ext.modules.collection_base import ExtEmbeddingBagCollection, check_ids
from torchrec_ext.modules.dynamic.checkpoint import bucket_entries, bucket_key, load_buckets
from torchrec_ext.modules.dynamic.config import DynamicEmbeddingBagConfig
from torchrec_ext.modules.dynamic.fused_update import DynamicFusedUpdate
from torchrec_ext.modules.dynamic.kind import DynamicTableKind, new_rows
from torchrec_ext.modules.dynamic.rows import KeyedRows
from torchrec_ext.modules.dynamic.shared import shared_rows


class DynamicTable(nn.Module):
    """Holder of one unsharded dynamic table: its rows, and its blocks as parameters
    (they get dense gradients only when the collection trains without fused_params)."""

    def __init__(self, cfg: DynamicEmbeddingBagConfig, device, trainable: bool) -> None:
        super().__init__()
        self.config = cfg
        self.steps = 0  # training lookups so far: the step stamped on rows
        self.rows = shared_rows(cfg, ("unsharded", str(device)),
                                lambda: new_rows(cfg, device, trainable_blocks=trainable))
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


class DynamicEmbeddingBagCollection(ExtEmbeddingBagCollection):
    """Drop-in `torchrec.EmbeddingBagCollection` of dynamic tables (any int64 id).

    Args:
        tables: `DynamicEmbeddingBagConfig`s.
        is_weighted: the input KJT carries per-sample weights (SUM pooling only).
        device: where the rows live.
        fused_params: as for TorchRec's sharder ({"optimizer": EmbOptimType.EXACT_SGD,
            "learning_rate": ...}); the backward pass then updates the touched rows and
            their optimizer state in place. Without it the blocks are parameters with dense
            gradients (blocks added later are new parameters, so build the optimizer after
            warm-up or preallocate initial_capacity).

    Returns (forward): a `KeyedTensor` with one pooled [batch, dim] per feature. In
    training mode unseen ids get rows; in eval mode nothing is inserted.

    Example:
        >>> import torch
        >>> from fbgemm_gpu.split_embedding_configs import EmbOptimType
        >>> from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        >>> ebc = DynamicEmbeddingBagCollection(
        ...     [DynamicEmbeddingBagConfig(name="q", num_embeddings=100, embedding_dim=8, feature_names=["f"])],
        ...     fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.1})
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([2**40, -7, 2**40]), torch.tensor([2, 1]))
        >>> ebc(kjt)["f"].sum().backward()   # rows created, then updated in place
        >>> ebc.table_size("q")
        2
    """

    config_type = DynamicEmbeddingBagConfig
    kind_type = DynamicTableKind

    def __init__(self, tables: Sequence[DynamicEmbeddingBagConfig], is_weighted: bool = False,
                 device: Optional[torch.device] = None,
                 fused_params: Optional[Mapping[str, Any]] = None) -> None:
        self._fused_params = dict(fused_params) if fused_params is not None else None
        super().__init__(tables, is_weighted=is_weighted, device=device)

    def _build_tables(self) -> None:
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
        self.count_step()
        return out

    def count_step(self) -> None:
        """Ends a training step (the tables' clock for eviction and admission); no-op in eval."""
        if self.training:
            for h in self._tables:
                h.steps += 1

    def _pool_table(self, index, values, offsets, weights):
        config = self._embedding_bag_configs[index]
        check_ids(config.name, values, None, None)
        holder = self._tables[index]
        w = weights.float() if weights is not None else None
        with holder.rows.lock:  # no other thread's eviction between the lookup and the pooling
            looked = holder.rows.lookup(values.long(), insert=self.training, step=holder.steps)
            holder.adopt_blocks()
            if self._fused is not None:
                return self._fused.lookup(self._optim_key(config.name), looked, offsets.long(), w,
                                          self._pooling[index])
            return holder.rows.pool(looked, offsets.long(), w, self._pooling[index])
