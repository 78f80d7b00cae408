"""Planner pieces that know torchrec_ext tables (through their kinds).

* `ExtStorageEstimator` charges each shard what its kind says it holds
  (`TableKind.storage_bytes`): a hashed table's buffer, a QR table's partition tables,
  a dynamic table's capacity, each with its fused optimizer's state; not
  num_embeddings x dim.
* `ExtEnumerator` drops sharding options a table cannot take (shards that would cut its
  regions, a sharding type its kind refuses) and logs why.
* `make_planner` builds an `EmbeddingShardingPlanner` with both.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.shard_estimators import (
    EmbeddingPerfEstimator,
    EmbeddingStorageEstimator,
)
from torchrec.distributed.planner.types import ParameterConstraints, ShardingOption
from torchrec.distributed.types import ModuleSharder, ShardingType

from torchrec_ext.modules.collection_base import ExtEmbeddingBagCollection
from torchrec_ext.modules.row_optim import supported_optimizer_kind
from torchrec_ext.modules.table_kind import find_table_kind, table_kind

logger = logging.getLogger(__name__)


def _ext_config(option: ShardingOption):
    module = option.module[1]
    if not isinstance(module, ExtEmbeddingBagCollection):
        return None
    for cfg in module.embedding_bag_configs():
        if cfg.name == option.name:
            return cfg
    return None


class ExtStorageEstimator(EmbeddingStorageEstimator):
    """TorchRec's storage estimate with each torchrec_ext shard's real state and optimizer bytes.

    TorchRec charges a shard rows x cols of the planner's view; a torchrec_ext shard holds
    what its kind says instead (for a row-wise QR table: its rows of the sharded partition
    plus a replica of the others), each with its fused optimizer state.
    """

    def estimate(self, sharding_options: List[ShardingOption], sharder_data_map=None) -> None:
        super().estimate(sharding_options, sharder_data_map)
        for option in sharding_options:
            cfg = _ext_config(option)
            if cfg is None:
                continue
            kind = table_kind(cfg)
            fused = sharder_data_map[option.module_type_key].fused_params if sharder_data_map else {}
            # DP tables train with the dense optimizer, charged by TorchRec.
            dp = option.sharding_type == ShardingType.DATA_PARALLEL.value
            optimizer = None if dp else supported_optimizer_kind(fused, f"table '{option.name}'", kind.optimizers)
            elem = option.tensor.element_size()
            for shard in option.shards:
                view_bytes = shard.size[0] * shard.size[1] * elem
                extra = kind.storage_bytes(cfg, option.sharding_type, shard.offset, shard.size, optimizer) - view_bytes
                if self._topology.compute_device == "cuda":
                    shard.storage.hbm += extra
                else:
                    shard.storage.ddr += extra


class ExtPerfEstimator(EmbeddingPerfEstimator):
    """TorchRec's perf model, pricing torchrec_ext kernels as FBGEMM's fused kernel.

    Our kernels do what TBE does per id (a pooled gather with an in-backward update), so
    TorchRec's bandwidth model is the honest first approximation; TorchRec 1.8.0 has no
    entry for CUSTOMIZED_KERNEL and would refuse the option.
    """

    def estimate(self, sharding_options: List[ShardingOption], sharder_data_map=None) -> None:
        swapped = [o for o in sharding_options
                   if o.compute_kernel == EmbeddingComputeKernel.CUSTOMIZED_KERNEL.value]
        for o in swapped:
            o.compute_kernel = EmbeddingComputeKernel.FUSED.value
        try:
            super().estimate(sharding_options, sharder_data_map)
        finally:
            for o in swapped:
                o.compute_kernel = EmbeddingComputeKernel.CUSTOMIZED_KERNEL.value


class ExtEnumerator(EmbeddingEnumerator):
    """Keeps only the options whose shards hold whole regions of torchrec_ext tables."""

    def enumerate(self, module: nn.Module, sharders: List[ModuleSharder[nn.Module]]) -> List[ShardingOption]:
        options = super().enumerate(module, sharders)
        kept, dropped = [], {}
        for option in options:
            cfg = _ext_config(option)
            reason = None if cfg is None else region_violation(cfg, option)
            if reason is None:
                kept.append(option)
            else:
                dropped.setdefault(option.name, []).append(reason)
        names_kept = {o.name for o in kept}
        for name, reasons in dropped.items():
            if name not in names_kept:
                raise ValueError(f"table '{name}': no valid sharding option: " + "; ".join(reasons))
            logger.info("table '%s': %d sharding option(s) dropped: %s", name, len(reasons),
                        "; ".join(sorted(set(reasons))))
        return kept


def region_violation(cfg, option: ShardingOption) -> Optional[str]:
    """Why this option cannot hold the table (its shards would cut regions...), or None."""
    kind = table_kind(cfg)
    reason = kind.unsupported_sharding(cfg, option.sharding_type)
    if reason is not None:
        return reason
    row_unit, col_unit = kind.row_shard_unit(cfg), kind.col_shard_unit(cfg)
    for shard in option.shards:
        (r, c), (rs, cs) = shard.offset, shard.size
        if r % row_unit or (rs % row_unit and r + rs != kind.parameter_shape(cfg)[0]):
            return (f"{option.sharding_type} shards rows at {r}+{rs}, not on the table's "
                    f"{row_unit}-row regions ({kind.shard_unit_rule(cfg)})")
        if c % col_unit or cs % col_unit:
            return (f"{option.sharding_type} shards columns at {c}+{cs}, not on multiples "
                    f"of {col_unit}")
    return None


def planned_bytes(cfg, sharding, world_size: int) -> int:
    """Bytes of fp32 table state a plan places on all ranks together (replicas counted):
    a torchrec_ext table's state pieces, a standard table's shards. Dynamic tables hold
    the rows they create, not a planned amount: ask them (`table_size`)."""
    kind = find_table_kind(cfg)  # None: a standard TorchRec table
    if kind is not None and not kind.fixed_size:
        raise ValueError(f"table '{cfg.name}': a dynamic table holds the rows it creates; use table_size()")
    if sharding.sharding_spec is None:  # data-parallel: a full copy per rank
        if kind is None:
            return world_size * cfg.num_embeddings * cfg.embedding_dim * 4
        full = kind.parameter_shape(cfg)
        return world_size * kind.storage_bytes(cfg, ShardingType.DATA_PARALLEL.value, (0, 0), full, None)
    shards = sharding.sharding_spec.shards
    if kind is not None:
        return sum(kind.storage_bytes(cfg, sharding.sharding_type, s.shard_offsets, s.shard_sizes, None)
                   for s in shards)
    return 4 * sum(s.shard_sizes[0] * s.shard_sizes[1] for s in shards)


def make_planner(
    topology: Topology,
    batch_size: int = 512,
    constraints: Optional[Dict[str, ParameterConstraints]] = None,
    **kwargs,
) -> EmbeddingShardingPlanner:
    """An `EmbeddingShardingPlanner` whose estimators and enumerator know torchrec_ext tables.

    Args:
        topology: TorchRec's `Topology` (world size, compute device, memory).
        batch_size: the per-rank batch the plan is costed for.
        constraints: TorchRec's `ParameterConstraints` per table name (sharding types,
            kernels, ...), as for TorchRec's planner.
        **kwargs: passed on to `EmbeddingShardingPlanner`.

    Returns:
        The planner; use `plan(module, sharders)` or `collective_plan(module, sharders, pg)`
        with `get_sharders()`. Options a table's kind cannot hold are dropped (logged at
        INFO with the reason); a table left with none raises an error naming it.

    Example:
        >>> from torchrec.distributed.planner import Topology
        >>> planner = make_planner(Topology(world_size=2, compute_device="cpu"), batch_size=512)
    """
    estimators = [
        ExtPerfEstimator(topology=topology, constraints=constraints),
        ExtStorageEstimator(topology=topology, constraints=constraints),
    ]
    enumerator = ExtEnumerator(
        topology=topology, batch_size=batch_size, constraints=constraints, estimator=estimators
    )
    return EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size,
        enumerator=enumerator,
        constraints=constraints,
        **kwargs,
    )
