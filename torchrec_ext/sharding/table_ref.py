"""How a table's torchrec_ext config and options ride through TorchRec's per-table
fused_params to the lookup kernels TorchRec builds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from torchrec.distributed.embedding_types import ShardedEmbeddingTable

from torchrec_ext.modules.table_kind import table_kind

# Key under which a table's config rides in its per-table fused_params.
TABLE_KEY = "_torchrec_ext_table"
# Key of the sharder's `table_batching` option (absent: on).
BATCHING_KEY = "_torchrec_ext_table_batching"


@dataclass(frozen=True)
class ExtTableRef:
    """Carries a table's torchrec_ext config through TorchRec's per-table fused_params.

    TorchRec groups a rank's tables into lookup kernels by their fused_params, so the ref
    compares by `group`: the kind's kernel group for kinds whose kernels serve many tables
    in one call, else the table's name (a kernel of its own).
    """

    group: str
    config: Any = field(compare=False, hash=False)

    @classmethod
    def of(cls, cfg: Any) -> "ExtTableRef":
        return cls(table_kind(cfg).kernel_group(cfg) or cfg.name, cfg)


def ext_table_config(table: ShardedEmbeddingTable):
    """The torchrec_ext config of a table, or None for TorchRec's own tables."""
    ref = (table.fused_params or {}).get(TABLE_KEY)
    return None if ref is None else ref.config


def table_batching(fused_params: Optional[Mapping[str, Any]]) -> bool:
    """Whether a kernel's shards pool in batched calls (the sharder's `table_batching`)."""
    return bool((fused_params or {}).get(BATCHING_KEY, True))


def without_ext_keys(fused_params: Optional[Mapping[str, Any]]) -> dict:
    """fused_params as the user gave them (for the fused optimizers)."""
    return {k: v for k, v in (fused_params or {}).items() if k not in (TABLE_KEY, BATCHING_KEY)}
