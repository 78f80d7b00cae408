"""Sharders that let DMP and the planner place torchrec_ext collections."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Type

from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ModuleSharder, ShardingType

from torchrec_ext.modules.collection_base import ExtEmbeddingBagCollection
from torchrec_ext.modules.dynamic import DynamicEmbeddingBagCollection
from torchrec_ext.modules.hashed import HashedEmbeddingBagCollection
from torchrec_ext.modules.qr import QREmbeddingBagCollection
from torchrec_ext.modules.row_optim import row_optimizer_kind
from torchrec_ext.sharding.dynamic import ShardedDynamicEmbeddingBagCollection
from torchrec_ext.sharding.fused_optim import optimizer_kind
from torchrec_ext.sharding.sharded_collection import ShardedExtEmbeddingBagCollection, planner_view
from torchrec_ext.sharding.table_ref import BATCHING_KEY

EXT_SHARDING_TYPES = [
    ShardingType.TABLE_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.COLUMN_WISE.value,
    ShardingType.DATA_PARALLEL.value,
]


class ExtEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """Sharder of `ExtEmbeddingBagCollection` (tables of any fixed-state kind, a user's own
    included), and the base of the other torchrec_ext sharders: TW, RW, CW, DP on CPU and CUDA.

    Args:
        fused_params: the fused optimizer, as for TorchRec's sharders
            ({"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.01, ...}).
        table_batching: a rank's tables of one kind pool (and update) in one native call;
            False gives each table calls of its own (what the benchmark compares).
    """

    module_cls: Type[nn.Module] = ExtEmbeddingBagCollection
    sharded_cls: Type[nn.Module] = ShardedExtEmbeddingBagCollection
    check_optimizer = staticmethod(optimizer_kind)

    def __init__(self, fused_params: Optional[Dict[str, Any]] = None, table_batching: bool = True,
                 **kwargs: Any) -> None:
        self.check_optimizer(fused_params, type(self).__name__)  # fail early on an unsupported optimizer
        self.table_batching = table_batching
        super().__init__(fused_params=fused_params, **kwargs)

    def shard(self, module, params, env, device=None, module_fqn=None):
        return self.sharded_cls(
            module=module,
            table_name_to_parameter_sharding=params,
            env=env,
            fused_params={**(self.fused_params or {}), BATCHING_KEY: self.table_batching},
            device=device,
            qcomm_codecs_registry=self.qcomm_codecs_registry,
            module_fqn=module_fqn,
        )

    def shardable_parameters(self, module) -> Dict[str, nn.Parameter]:
        return {t.name: planner_view(module, t.name, t) for t in module.embedding_bag_configs()}

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return list(EXT_SHARDING_TYPES)

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> List[str]:
        if sharding_type == ShardingType.DATA_PARALLEL.value:
            return [EmbeddingComputeKernel.DENSE.value]
        return [EmbeddingComputeKernel.CUSTOMIZED_KERNEL.value]

    @property
    def module_type(self) -> Type[nn.Module]:
        return self.module_cls

    @property
    def sharded_module_type(self):
        return self.sharded_cls


class HashedEmbeddingBagCollectionSharder(ExtEmbeddingBagCollectionSharder):
    module_cls = HashedEmbeddingBagCollection


class QREmbeddingBagCollectionSharder(ExtEmbeddingBagCollectionSharder):
    module_cls = QREmbeddingBagCollection


class DynamicEmbeddingBagCollectionSharder(ExtEmbeddingBagCollectionSharder):
    """Dynamic tables: table-wise, row-wise (by key hash) and column-wise."""

    module_cls = DynamicEmbeddingBagCollection
    sharded_cls = ShardedDynamicEmbeddingBagCollection
    check_optimizer = staticmethod(row_optimizer_kind)  # dynamic tables also train with Adam

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return [t for t in EXT_SHARDING_TYPES if t != ShardingType.DATA_PARALLEL.value]


class RowWiseCpuEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """TorchRec's EBC sharder, also offering row-wise on CPU (TorchRec's RW runs on gloo)."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        types = super().sharding_types(compute_device_type)
        if compute_device_type == "cpu" and ShardingType.ROW_WISE.value not in types:
            types.append(ShardingType.ROW_WISE.value)
        return types


def project_sharders(fused_params: Optional[Dict[str, Any]] = None,
                     table_batching: bool = True) -> List[ModuleSharder[nn.Module]]:
    """One sharder per torchrec_ext collection type."""
    return [cls(fused_params=fused_params, table_batching=table_batching)
            for cls in (ExtEmbeddingBagCollectionSharder, HashedEmbeddingBagCollectionSharder,
                        QREmbeddingBagCollectionSharder, DynamicEmbeddingBagCollectionSharder)]


def get_sharders(fused_params: Optional[Dict[str, Any]] = None,
                 table_batching: bool = True) -> List[ModuleSharder[nn.Module]]:
    """TorchRec's default sharders plus torchrec_ext's, ready for DMP and the planner.

    Args:
        fused_params: an FBGEMM `EmbOptimType` under "optimizer", "learning_rate", ...:
            the fused optimizer of TorchRec's EBC and of every torchrec_ext table.
        table_batching: see `ExtEmbeddingBagCollectionSharder`.

    Returns: the sharders, for `EmbeddingShardingPlanner.plan` and `DistributedModelParallel`.

    Example:
        >>> from fbgemm_gpu.split_embedding_configs import EmbOptimType
        >>> sharders = get_sharders({"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.05})
        >>> "DynamicEmbeddingBagCollectionSharder" in [type(s).__name__ for s in sharders]
        True
    """
    sharders: List[ModuleSharder[nn.Module]] = []
    for s in get_default_sharders():
        if type(s) is EmbeddingBagCollectionSharder:
            s = RowWiseCpuEmbeddingBagCollectionSharder(fused_params=fused_params)
        sharders.append(s)
    return sharders + project_sharders(fused_params, table_batching)
