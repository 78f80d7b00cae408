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
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys
from torchrec.distributed.types import ShardingType

from torchrec_ext.modules.dynamic_embedding_bag import bucket_entries, bucket_key, load_buckets
from torchrec_ext.sharding.dynamic_shard import DynamicLocalShard
from torchrec_ext.sharding.hash_rw import ExtDynamicRwPooledEmbeddingSharding
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
            shards.sort(key=lambda s: int(s.metadata.shard_offsets[1]) if s.metadata is not None else 0)

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

    def _full_rows(self, table: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """(keys, full-width values) of what this rank holds; column-wise tables gather
        their columns from every holder (every rank must call this for those tables)."""
        shards = self._dynamic_shards[table]
        if self.module_sharding_plan[table].sharding_type != ShardingType.COLUMN_WISE.value:
            return shards[0].rows.export()
        local = [(int(s.metadata.shard_offsets[1]), *s.rows.export()) for s in shards]
        gathered: List = [None] * dist.get_world_size(self._env.process_group)
        dist.all_gather_object(gathered, local, group=self._env.process_group)
        pieces = sorted((p for per_rank in gathered for p in per_rank), key=lambda p: p[0])
        keys = pieces[0][1]
        for _, k, _ in pieces[1:]:
            if not torch.equal(k, keys):
                raise RuntimeError(f"table '{table}': column shards hold different keys")
        return keys, torch.cat([v for _, _, v in pieces], dim=1)

    # --- state ---
    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        if destination is None:
            destination = OrderedDict()
        for t in self._table_names:
            cw = self.module_sharding_plan[t].sharding_type == ShardingType.COLUMN_WISE.value
            owned = self._owned_buckets(t)
            if not owned and not cw:
                continue
            keys, values = self._full_rows(t)  # a collective for column-wise tables
            if not owned:
                continue
            n = self._table_name_to_config[t].key_buckets
            for b, entry in bucket_entries(keys, values, owned, n).items():
                destination[bucket_key(f"{prefix}embedding_bags.{t}.", b)] = entry
        return destination

    @torch.no_grad()
    def load_state_dict(self, state_dict, strict: bool = True):
        missing: List[str] = []
        known = set()
        for t in self._table_names:
            cfg = self._table_name_to_config[t]
            prefix = f"embedding_bags.{t}."
            known.update(bucket_key(prefix, b) for b in range(cfg.key_buckets))
            owned = self._owned_buckets(t)
            for s in self._dynamic_shards[t]:
                col = int(s.metadata.shard_offsets[1]) if s.metadata is not None else 0
                load_buckets(s.rows, cfg, state_dict, prefix, owned, col_offset=col)
            missing += [bucket_key(prefix, b) for b in owned if bucket_key(prefix, b) not in state_dict]
        unexpected = [k for k in state_dict if k not in known]
        if strict and (missing or unexpected):
            raise RuntimeError(f"{type(self).__name__}: missing keys {missing}, unexpected keys {unexpected}")
        return _IncompatibleKeys(missing_keys=missing, unexpected_keys=unexpected)
