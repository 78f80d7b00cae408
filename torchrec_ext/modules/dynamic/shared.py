"""Rows shared by name: tables of collections built in one process that name the same
`shared_name` (and the same shard of a plan) hold one set of rows."""

from __future__ import annotations

from typing import Callable, Dict, Optional

from torchrec_ext.modules.dynamic.config import DynamicEmbeddingBagConfig
from torchrec_ext.modules.dynamic.rows import DynamicRows

# shared_name -> rows, per process (collections built in one process share rows by name)
_SHARED: Dict[tuple, DynamicRows] = {}


def shared_rows(cfg: DynamicEmbeddingBagConfig, signature: tuple,
                make: Callable[[], DynamicRows]) -> DynamicRows:
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
