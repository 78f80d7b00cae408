"""The sharded form of every torchrec_ext collection.

It is TorchRec's `ShardedEmbeddingBagCollection` (input dist, output dist, MEAN callback,
train-pipeline hooks) with three things of its own: the strategies build torchrec_ext
kernels, each table's state is a ShardedTensor of its own parameter (not of
num_embeddings x dim), and ids are validated against each table before they leave the rank.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
from torch.distributed._shard.sharded_tensor.metadata import ShardedTensorMetadata, TensorProperties
from torch.nn.modules.module import _IncompatibleKeys
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.sharding.dp_sharding import DpPooledEmbeddingSharding
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import PoolingType
from torchrec.optim.fused import EmptyFusedOptimizer

from torchrec_ext.modules.collection_base import check_ids, check_kjt, collection_label, weights_as_read
from torchrec_ext.modules.table_kind import table_kind
from torchrec_ext.sharding.replica_sync import ReplicaGradSync
from torchrec_ext.sharding.shardings import SHARDING_CLASSES
from torchrec_ext.sharding.table_ref import TABLE_KEY, ExtTableRef


def planner_view(module: nn.Module, table: str, cfg: Any) -> torch.Tensor:
    """The tensor TorchRec plans for a table: a meta tensor of the kind's view (its shape
    and dtype), never the table's own state."""
    kind = table_kind(cfg)
    return nn.Parameter(torch.empty(kind.parameter_shape(cfg), dtype=kind.parameter_dtype(cfg), device="meta"),
                        requires_grad=False)


class _PlannerView(nn.Module):
    """What TorchRec's sharding-info builder reads of a collection: configs, weightedness,
    and `embedding_bags.<table>.weight` (the planner's view of each table)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._configs = module.embedding_bag_configs()
        self._weighted = module.is_weighted()
        self.embedding_bags = nn.ModuleDict()
        for cfg in self._configs:
            holder = nn.Module()
            holder.register_parameter("weight", planner_view(module, cfg.name, cfg))
            self.embedding_bags[cfg.name] = holder

    def embedding_bag_configs(self):
        return self._configs

    def is_weighted(self) -> bool:
        return self._weighted


class ShardedExtEmbeddingBagCollection(ShardedEmbeddingBagCollection):
    _replica_sync: Optional[ReplicaGradSync] = None  # made when a plan replicates pieces

    def __init__(self, module, table_name_to_parameter_sharding, *args, **kwargs) -> None:
        super().__init__(module, table_name_to_parameter_sharding, *args, **kwargs)
        # TorchRec 1.8.0 divides by the bag length every feature that is not a row-wise
        # SUM feature once any row-wise table pools by MEAN, so table-wise and column-wise
        # tables of the same collection (already pooled in their kernel) would be divided
        # too. Mark them as needing no division.
        # the features, in table order, that input_dist hands TorchRec
        self._input_order = list(dict.fromkeys(f for cfg in self._embedding_bag_configs for f in cfg.feature_names))
        row_wise = (ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value)
        for cfg in self._embedding_bag_configs:
            if table_name_to_parameter_sharding[cfg.name].sharding_type not in row_wise:
                self._pooling_type_to_rs_features[PoolingType.SUM.value].extend(cfg.feature_names)

    @classmethod
    def create_grouped_sharding_infos(cls, module, table_name_to_parameter_sharding, prefix,
                                      fused_params, suffix="weight"):
        infos = super().create_grouped_sharding_infos(
            _PlannerView(module), table_name_to_parameter_sharding, prefix, fused_params, suffix
        )
        configs = {t.name: t for t in module.embedding_bag_configs()}
        for sharding_type, per_type in infos.items():
            for info in per_type:
                cfg = configs[info.embedding_config.name]
                if sharding_type == ShardingType.ROW_WISE.value:
                    # The id space TorchRec bucketizes: rank r's block of ids must be the
                    # ids that rows [r*block, (r+1)*block) of the view serve.
                    shards = info.param_sharding.sharding_spec.shards
                    info.embedding_config.num_embeddings = table_kind(cfg).rw_id_space(
                        cfg, int(shards[0].shard_sizes[0]), len(shards))
                else:
                    # TorchRec sizes the local shard from num_embeddings, i.e. the view.
                    info.embedding_config.num_embeddings = table_kind(cfg).parameter_shape(cfg)[0]
                info.fused_params = {**info.fused_params, TABLE_KEY: ExtTableRef.of(cfg)}
        return infos

    @classmethod
    def create_embedding_bag_sharding(cls, sharding_infos, env, device=None,
                                      permute_embeddings=False, qcomm_codecs_registry=None):
        sharding_type = sharding_infos[0].param_sharding.sharding_type
        if sharding_type not in SHARDING_CLASSES:
            names = [i.embedding_config.name for i in sharding_infos]
            raise ValueError(f"tables {names}: sharding type {sharding_type} is not supported")
        klass = SHARDING_CLASSES[sharding_type]
        if klass is SHARDING_CLASSES[ShardingType.DATA_PARALLEL.value]:
            return klass(sharding_infos, env, device)
        kwargs = {"permute_embeddings": permute_embeddings} if sharding_type == ShardingType.COLUMN_WISE.value else {}
        return klass(sharding_infos, env, device, qcomm_codecs_registry=qcomm_codecs_registry, **kwargs)

    def embedding_bag_configs(self):
        """The tables' configs, as on the unsharded collection."""
        return self._embedding_bag_configs

    def _kernels(self):
        for lookup, sharding in zip(self._lookups, self._embedding_shardings):
            inner = lookup.module if isinstance(sharding, DpPooledEmbeddingSharding) else lookup
            yield from inner._emb_modules

    def _sync_replicas(self) -> None:
        """Row-wise tables whose pieces every rank holds sum those gradients across ranks.

        Every rank shards this module with the same plan, so all ranks agree on whether
        the process group below is needed and create it at the same point."""
        shards = [(s, i) for k in self._kernels() for s in k.shards
                  for i, pc in enumerate(s.pieces) if pc.replicated]
        if not shards or self._replica_sync is not None:
            return
        pg = dist.new_group(backend=dist.get_backend(self._env.process_group))
        self._replica_sync = ReplicaGradSync(pg)
        for s, i in shards:
            s.replica_sync = self._replica_sync
            self._replica_sync.register(s.replica_key(i), s, i)

    # --- parameters and state ---
    def _initialize_torch_state(self, skip_registering: bool = False) -> None:
        self.embedding_bags: nn.ModuleDict = nn.ModuleDict({t: nn.Module() for t in self._table_names})
        # table -> state name -> [(local piece, its metadata or None if every rank holds it)]
        self._ext_shards: Dict[str, Dict[str, List[Tuple[nn.Parameter, Any]]]] = {
            t: {n: [] for n in self._state_names(t)} for t in self._table_names
        }
        for kernel in self._kernels():
            for table, name, param, meta in kernel.local_shards():
                self._ext_shards[table][name].append((param, meta))
        self._sync_replicas()
        for t, per_name in self._ext_shards.items():
            holder = self.embedding_bags[t]
            for name, pieces in per_name.items():
                if not pieces:  # another rank holds this table
                    empty = nn.Parameter(torch.empty(0))
                    empty._in_backward_optimizers = [EmptyFusedOptimizer()]
                    holder.register_parameter(name, empty)
                for k, (param, _) in enumerate(pieces):
                    holder.register_parameter(name if k == 0 else f"{name}_cw{k}", param)

    def reset_parameters(self) -> None:
        pass  # every piece initialised itself from global coordinates (plan-independent)

    def _state_tensor(self, table: str, name: str) -> Any:
        """A full tensor where every rank holds the whole state tensor (DP, replicated
        pieces), else a ShardedTensor whose shards are the plan's pieces."""
        plan = self.module_sharding_plan[table]
        pieces = self._ext_shards[table][name]
        if plan.sharding_type == ShardingType.DATA_PARALLEL.value or (pieces and pieces[0][1] is None):
            return pieces[0][0].detach()
        cfg = self._table_name_to_config[table]
        kind = table_kind(cfg)
        global_shards = []
        for m in plan.sharding_spec.shards:
            for pc in kind.state_pieces(cfg, plan.sharding_type, m.shard_offsets, m.shard_sizes):
                if pc.name == name:
                    global_shards.append(ShardMetadata(list(pc.offsets), list(pc.sizes), m.placement))
        metadata = ShardedTensorMetadata(
            shards_metadata=global_shards,
            size=torch.Size(kind.state_shape(cfg, name)),
            tensor_properties=TensorProperties(dtype=pieces[0][0].dtype if pieces else torch.float32),
        )
        local = [Shard(tensor=p.detach(), metadata=m) for p, m in pieces]
        return ShardedTensor._init_from_local_shards_and_global_metadata(
            local_shards=local, sharded_tensor_metadata=metadata, process_group=self._env.process_group
        )

    def _state_names(self, table: str) -> List[str]:
        cfg = self._table_name_to_config[table]
        return table_kind(cfg).state_names(cfg)

    def _state_keys(self) -> List[Tuple[str, str]]:
        return [(t, n) for t in self._table_names for n in self._state_names(t)]

    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        if destination is None:
            destination = OrderedDict()
        for t, n in self._state_keys():
            destination[f"{prefix}embedding_bags.{t}.{n}"] = self._state_tensor(t, n)
        return destination

    @torch.no_grad()
    def load_state_dict(self, state_dict, strict: bool = True):
        """Loads full tensors (any plan) or ShardedTensors of the same plan.

        To move a checkpoint between plans, load it with torch.distributed.checkpoint:
        it fills this module's state tensors, which share storage with the parameters.
        """
        missing: List[str] = []
        expected = {f"embedding_bags.{t}.{n}" for t, n in self._state_keys()}
        unexpected = [k for k in state_dict if k not in expected]
        for t, n in self._state_keys():
            key = f"embedding_bags.{t}.{n}"
            if key not in state_dict:
                missing.append(key)
                continue
            src = state_dict[key]
            for param, meta in self._ext_shards[t][n]:
                param.copy_(_slice_for(src, meta, t))
        if strict and (missing or unexpected):
            raise RuntimeError(f"{type(self).__name__}: missing keys {missing}, unexpected keys {unexpected}")
        return _IncompatibleKeys(missing_keys=missing, unexpected_keys=unexpected)

    # --- input validation, with the table's name, before ids leave this rank ---
    def input_dist(self, ctx, features):
        label = collection_label(type(self).__name__, self._embedding_bag_configs)
        check_kjt(label, features, self._embedding_bag_configs, self._is_weighted, self._device)
        if features.stride() == 0 and self._has_mean_pooling_callback:
            raise ValueError(f"{label}: an empty batch (batch size 0) cannot be pooled by MEAN row-wise "
                             "(TorchRec divides per sample); give every rank at least one sample")
        for cfg in self._embedding_bag_configs:
            for f in cfg.feature_names:
                check_ids(cfg.name, features[f].values(), *table_kind(cfg).id_bounds(cfg))
        features = weights_as_read(features, self._is_weighted)
        # TorchRec builds its input distribution once, from the first batch's keys, and
        # then assumes every batch has them in that order (another order would silently
        # route ids to the wrong tables): hand it always the same keys, in table order.
        if features.keys() != self._input_order:
            keys = features.keys()
            features = features.permute([keys.index(f) for f in self._input_order])
        return super().input_dist(ctx, features)


def _slice_for(src: Any, meta: Any, table: str) -> torch.Tensor:
    """The part of a loaded value that the local shard described by `meta` holds."""
    if meta is None:  # every rank holds the whole tensor (data-parallel, replicated pieces)
        if isinstance(src, ShardedTensor):
            raise ValueError(f"table '{table}': cannot load a ShardedTensor into a replicated "
                             "state tensor; load a full tensor or use torch.distributed.checkpoint")
        return src
    r, c = meta.shard_offsets
    rs, cs = meta.shard_sizes
    if isinstance(src, ShardedTensor):
        for s in src.local_shards():
            if list(s.metadata.shard_offsets) == [r, c] and list(s.metadata.shard_sizes) == [rs, cs]:
                return s.tensor
        raise ValueError(
            f"table '{table}': the ShardedTensor was written under another plan; load it with "
            "torch.distributed.checkpoint, or load a full tensor"
        )
    if src.dim() != 2 or src.shape[0] < r + rs or src.shape[1] < c + cs:
        raise ValueError(f"table '{table}': tensor of shape {tuple(src.shape)} is smaller than the table")
    return src[r:r + rs, c:c + cs]
