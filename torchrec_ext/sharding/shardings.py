"""TorchRec's sharding strategies, with lookups that run torchrec_ext kernels.

TorchRec 1.8.0 never routes `CUSTOMIZED_KERNEL` to a kernel, so each strategy here
builds an `ExtGroupedPooledEmbeddingsLookup`; input and output distribution (KJT
all-to-all, reduce-scatter, gradient division by the world size) stay TorchRec's own.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torchrec.distributed.embedding_lookup import GroupedPooledEmbeddingsLookup
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.sharding.cw_sharding import CwPooledEmbeddingSharding
from torchrec.distributed.sharding.dp_sharding import DpPooledEmbeddingSharding
from torchrec.distributed.sharding.rw_sharding import RwPooledEmbeddingSharding
from torchrec.distributed.sharding.tw_sharding import TwPooledEmbeddingSharding
from torchrec.distributed.types import ShardingType

from torchrec_ext.sharding.kernels import ExtFusedPooledEmbeddingKernel, ExtPooledEmbeddingKernel
from torchrec_ext.sharding.table_ref import ext_table_config


class ExtGroupedPooledEmbeddingsLookup(GroupedPooledEmbeddingsLookup):
    def _create_embedding_kernel(self, config, device, pg, sharding_type, env):
        if any(ext_table_config(t) is not None for t in config.embedding_tables):
            if config.compute_kernel == EmbeddingComputeKernel.DENSE:
                return ExtPooledEmbeddingKernel(config, device, sharding_type)
            return ExtFusedPooledEmbeddingKernel(config, device, sharding_type)
        return super()._create_embedding_kernel(config, device, pg, sharding_type, env)


def _with_ext_lookup(base, name: str, group_of=lambda strategy: strategy._pg, **lookup_kwargs):
    """`base` strategy whose lookup runs torchrec_ext kernels (TorchRec's kwargs otherwise);
    group_of(strategy) is the process group its lookup gets."""

    def create_lookup(self, device: Optional[torch.device] = None,
                      fused_params: Optional[Dict[str, Any]] = None, feature_processor=None):
        return ExtGroupedPooledEmbeddingsLookup(
            grouped_configs=self._grouped_embedding_configs,
            pg=group_of(self),
            device=device if device is not None else self._device,
            feature_processor=feature_processor,
            env=self._env,
            **lookup_kwargs,
        )

    return type(name, (base,), {"create_lookup": create_lookup, "__module__": __name__})


ExtTwPooledEmbeddingSharding = _with_ext_lookup(TwPooledEmbeddingSharding, "ExtTwPooledEmbeddingSharding")
ExtRwPooledEmbeddingSharding = _with_ext_lookup(
    RwPooledEmbeddingSharding, "ExtRwPooledEmbeddingSharding", sharding_type=ShardingType.ROW_WISE
)
ExtCwPooledEmbeddingSharding = _with_ext_lookup(CwPooledEmbeddingSharding, "ExtCwPooledEmbeddingSharding")
# DP weights are trained by the dense optimizer; DDP averages their gradients.
# (DP strategies keep only the env, not a process group of their own.)
ExtDpPooledEmbeddingSharding = _with_ext_lookup(
    DpPooledEmbeddingSharding, "ExtDpPooledEmbeddingSharding",
    group_of=lambda strategy: strategy._env.process_group, scale_weight_gradients=False
)


SHARDING_CLASSES = {
    ShardingType.TABLE_WISE.value: ExtTwPooledEmbeddingSharding,
    ShardingType.ROW_WISE.value: ExtRwPooledEmbeddingSharding,
    ShardingType.COLUMN_WISE.value: ExtCwPooledEmbeddingSharding,
    ShardingType.DATA_PARALLEL.value: ExtDpPooledEmbeddingSharding,
}
