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

from torchrec_ext.sharding.kernels import (
    ExtFusedPooledEmbeddingKernel,
    ExtPooledEmbeddingKernel,
    ext_table_config,
)


class ExtGroupedPooledEmbeddingsLookup(GroupedPooledEmbeddingsLookup):
    def _create_embedding_kernel(self, config, device, pg, sharding_type, env):
        if any(ext_table_config(t) is not None for t in config.embedding_tables):
            if config.compute_kernel == EmbeddingComputeKernel.DENSE:
                return ExtPooledEmbeddingKernel(config, device, sharding_type)
            return ExtFusedPooledEmbeddingKernel(config, device, sharding_type)
        return super()._create_embedding_kernel(config, device, pg, sharding_type, env)


def _lookup(sharding, device, feature_processor, sharding_type=None, pg=None, scale=True):
    return ExtGroupedPooledEmbeddingsLookup(
        grouped_configs=sharding._grouped_embedding_configs,
        pg=pg if pg is not None else sharding._pg,
        device=device if device is not None else sharding._device,
        feature_processor=feature_processor,
        scale_weight_gradients=scale,
        sharding_type=sharding_type,
        env=sharding._env,
    )


class ExtTwPooledEmbeddingSharding(TwPooledEmbeddingSharding):
    def create_lookup(self, device: Optional[torch.device] = None,
                      fused_params: Optional[Dict[str, Any]] = None, feature_processor=None):
        return _lookup(self, device, feature_processor)


class ExtRwPooledEmbeddingSharding(RwPooledEmbeddingSharding):
    def create_lookup(self, device: Optional[torch.device] = None,
                      fused_params: Optional[Dict[str, Any]] = None, feature_processor=None):
        return _lookup(self, device, feature_processor, sharding_type=ShardingType.ROW_WISE)


class ExtCwPooledEmbeddingSharding(CwPooledEmbeddingSharding):
    def create_lookup(self, device: Optional[torch.device] = None,
                      fused_params: Optional[Dict[str, Any]] = None, feature_processor=None):
        return _lookup(self, device, feature_processor)


class ExtDpPooledEmbeddingSharding(DpPooledEmbeddingSharding):
    def create_lookup(self, device: Optional[torch.device] = None,
                      fused_params: Optional[Dict[str, Any]] = None, feature_processor=None):
        # DP weights are trained by the dense optimizer; DDP averages their gradients.
        return _lookup(self, device, feature_processor, pg=self._env.process_group, scale=False)


SHARDING_CLASSES = {
    ShardingType.TABLE_WISE.value: ExtTwPooledEmbeddingSharding,
    ShardingType.ROW_WISE.value: ExtRwPooledEmbeddingSharding,
    ShardingType.COLUMN_WISE.value: ExtCwPooledEmbeddingSharding,
    ShardingType.DATA_PARALLEL.value: ExtDpPooledEmbeddingSharding,
}
