"""The sharded form of `DynamicEmbeddingBagCollection`.

Its state is the unsharded collection's: `embedding_bags.<table>.bucket_<b>` entries
(`KeyedRows`), each written by exactly one rank:
  table-wise   the rank holding the table writes every bucket;
  row-wise     rank r writes the buckets b with b % world_size == r (the keys it holds);
  column-wise  the column shards gather their columns (a collective inside state_dict) and
               every holder emits the full rows of every bucket (identical values, which
               torch.distributed.checkpoint saves once).
Loading takes the buckets a rank holds from any such checkpoint, so a table moves between
plans and world sizes key by key.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys
from torchrec.distributed.types import ShardingType

from torchrec_ext.modules.dynamic.checkpoint import bucket_entries, bucket_key, load_buckets
from torchrec_ext.modules.dynamic.rows import KeyedRows, bucket_of
from torchrec_ext.modules.row_optim import PER_ROW_STATES
from torchrec_ext.sharding.dynamic import batch  # noqa: F401  (registers the dynamic form)
from torchrec_ext.sharding.dynamic.hash_rw import ExtDynamicRwPooledEmbeddingSharding
from torchrec_ext.sharding.dynamic.local_shard import DynamicLocalShard
from torchrec_ext.sharding.sharded_collection import ShardedExtEmbeddingBagCollection


class ShardedDynamicEmbeddingBagCollection(ShardedExtEmbeddingBagCollection):
    @classmethod
    def create_embedding_bag_sharding(cls, sharding_infos, env, device=None, permute_embeddings=False,
                                      qcomm_codecs_registry=None):
        if sharding_infos[0].param_sharding.sharding_type == ShardingType.ROW_WISE.value:
            return ExtDynamicRwPooledEmbeddingSharding(sharding_infos, env, device,
                                                       qcomm_codecs_registry=qcomm_codecs_registry)
        return super().create_embedding_bag_sharding(sharding_infos, env, device, permute_embeddings,
                                                     qcomm_codecs_registry)

    def _initialize_torch_state(self, skip_registering: bool = False) -> None:
        self.embedding_bags: nn.ModuleDict = nn.ModuleDict({t: nn.Module() for t in self._table_names})
        self._dynamic_shards: Dict[str, List[DynamicLocalShard]] = {t: [] for t in self._table_names}
        for kernel in self._kernels():
            for s in kernel.shards:
                self._dynamic_shards[s.table_name].append(s)
        for shards in self._dynamic_shards.values():
            shards.sort(key=lambda s: s.rows.col_offset)

    # --- what this rank holds ---
    def table_size(self, name: str) -> int:
        """Rows of `name` held on this rank (column shards of one table count once)."""
        shards = self._shards_of(name)
        return len(shards[0].rows) if shards else 0

    def keys(self, name: str) -> torch.Tensor:
        """Keys of `name` held on this rank."""
        shards = self._shards_of(name)
        return shards[0].rows.keys() if shards else torch.empty(0, dtype=torch.long)

    def _shards_of(self, name: str) -> List[DynamicLocalShard]:
        if name not in self._dynamic_shards:
            raise KeyError(f"{type(self).__name__}: no table named '{name}'")
        return self._dynamic_shards[name]

    def _owned_buckets(self, table: str) -> List[int]:
        """Buckets whose keys this rank holds (empty if it holds no shard of the table)."""
        cfg = self._table_name_to_config[table]
        if not self._dynamic_shards[table]:
            return []
        plan = self.module_sharding_plan[table]
        if plan.sharding_type != ShardingType.ROW_WISE.value:
            return list(range(cfg.key_buckets))
        placements = [int(m.placement.rank()) for m in plan.sharding_spec.shards]
        me = placements.index(self._env.rank)
        return [b for b in range(cfg.key_buckets) if b % len(placements) == me]

    def _full_entry(self, table: str, since_step=None) -> KeyedRows:
        """What this rank holds of a table, full width: column-wise tables gather their
        columns from every holder (every rank must call this for those tables)."""
        shards = self._dynamic_shards[table]
        if not self._column_wise(table):
            return shards[0].rows.export(since_step)
        local = [(s.rows.col_offset, s.rows.export(since_step).cpu()) for s in shards]
        gathered: List = [None] * dist.get_world_size(self._env.process_group)
        dist.all_gather_object(gathered, local, group=self._env.process_group)
        pieces = sorted((p for per_rank in gathered for p in per_rank), key=lambda p: p[0])
        first = pieces[0][1]
        for _, e in pieces[1:]:
            if not torch.equal(e.keys, first.keys):
                raise RuntimeError(f"table '{table}': column shards hold different keys")
        cat = lambda name: torch.cat([e.optimizer[name] for _, e in pieces], dim=1)  # noqa: E731
        # per-column optimizer state is concatenated; per-row state (each column shard
        # keeps its own, as FBGEMM does) is taken from the first shard
        optimizer = {n: (v if n in PER_ROW_STATES else cat(n)) for n, v in first.optimizer.items()}
        return KeyedRows(first.keys, torch.cat([e.values for _, e in pieces], dim=1), optimizer,
                         first.metadata, first.pending_keys, first.pending_counts, first.deleted)

    # --- lifecycle, per rank ---
    def stats(self, name: str) -> Dict[str, float]:
        """This rank's statistics of `name` (first column shard; empty if it holds none)."""
        shards = self._shards_of(name)
        return shards[0].rows.statistics() if shards else {}

    def evict(self, name: Optional[str] = None) -> int:
        """Runs eviction now on this rank's shards (one table, or all); rows removed."""
        names = [name] if name is not None else list(self._table_names)
        removed = 0
        for n in names:
            for k, s in enumerate(self._shards_of(n)):
                r = s.rows.evict()
                removed += r if k == 0 else 0
        return removed

    def export_delta(self, since_step: int) -> Dict[str, KeyedRows]:
        """Per table, what this rank holds that changed at or after `since_step` (full
        width; column-wise tables gather, so every rank must call this)."""
        out = {}
        for t in self._table_names:
            held = bool(self._dynamic_shards[t])
            if held or self._column_wise(t):
                entry = self._full_entry(t, since_step)  # a collective for column-wise tables
                if held:
                    out[t] = entry.cpu()
        return out

    def import_delta(self, delta: Mapping[str, KeyedRows]) -> None:
        """Applies deltas (from any plan or rank): each rank takes the keys it holds."""
        for t, entry in delta.items():
            cfg = self._table_name_to_config[t]
            part = entry.select(self._owned(t, entry.keys))
            if entry.deleted is not None:
                part.deleted = entry.deleted[self._owned(t, entry.deleted)]
            for s in self._dynamic_shards[t]:
                s.rows.load(part, s.rows.column_slice(cfg.embedding_dim))

    def _owned(self, table: str, keys: torch.Tensor) -> torch.Tensor:
        """Mask of the keys this rank holds (their bucket is one of its buckets)."""
        owned = torch.tensor(self._owned_buckets(table), dtype=torch.long)
        return torch.isin(bucket_of(keys, self._table_name_to_config[table].key_buckets), owned)

    def _column_wise(self, table: str) -> bool:
        return self.module_sharding_plan[table].sharding_type == ShardingType.COLUMN_WISE.value

    # --- state ---
    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        if destination is None:
            destination = OrderedDict()
        for t in self._table_names:
            owned = self._owned_buckets(t)
            if not owned and not self._column_wise(t):
                continue
            entry = self._full_entry(t)  # a collective for column-wise tables
            if not owned:
                continue
            n = self._table_name_to_config[t].key_buckets
            for b, e in bucket_entries(entry, owned, n).items():
                destination[bucket_key(f"{prefix}embedding_bags.{t}.", b)] = e
            destination[f"{prefix}embedding_bags.{t}.step"] = torch.tensor(self._dynamic_shards[t][0].steps)
        return destination

    @torch.no_grad()
    def load_state_dict(self, state_dict, strict: bool = True):
        missing: List[str] = []
        known = set()
        for t in self._table_names:
            cfg = self._table_name_to_config[t]
            prefix = f"embedding_bags.{t}."
            known.update(bucket_key(prefix, b) for b in range(cfg.key_buckets))
            known.add(prefix + "step")
            owned = self._owned_buckets(t)
            for s in self._dynamic_shards[t]:
                load_buckets(s.rows, cfg, state_dict, prefix, owned)
                if prefix + "step" in state_dict:
                    s.steps = int(state_dict[prefix + "step"])
            missing += [bucket_key(prefix, b) for b in owned if bucket_key(prefix, b) not in state_dict]
        unexpected = [k for k in state_dict if k not in known]
        if strict and (missing or unexpected):
            raise RuntimeError(f"{type(self).__name__}: missing keys {missing}, unexpected keys {unexpected}")
        return _IncompatibleKeys(missing_keys=missing, unexpected_keys=unexpected)
