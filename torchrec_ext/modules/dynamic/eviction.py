"""Eviction for dynamic tables: which rows leave, freeing their storage, optimizer state
and metadata for reuse.

Two moments: every `eviction_interval` training steps (and on demand, `.evict()`), rows a
policy calls expired go; and when a batch needs room beyond `max_capacity`, a
capacity-bounded policy (LRU, LFU, or your scores) evicts its lowest-score rows in the same
operation, never a row the batch itself uses. Policies are specs on
`DynamicEmbeddingBagConfig(eviction=..., eviction_interval=...)`.

Subclass `EvictionPolicy` and implement `expired` and/or `scores` for your own policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass
class RowView:
    """What a policy sees of the rows a table shard holds (aligned 1-D tensors)."""

    keys: torch.Tensor
    last_seen: torch.Tensor  # training step of the last lookup
    count: torch.Tensor  # lookups since the row was created
    created: torch.Tensor  # step the row was created
    values: Callable[[], torch.Tensor]  # [n, dim] float32 (this shard's columns), on demand


class EvictionPolicy:
    # True: when a batch needs room beyond max_capacity, evict the lowest `scores` first
    capacity_bound: bool = False

    def expired(self, rows: RowView, step: int) -> Optional[torch.Tensor]:
        """Bool mask of rows to remove at an eviction pass (None: none)."""
        return None

    def scores(self, rows: RowView, step: int) -> torch.Tensor:
        """Lower scores are evicted first when room is needed."""
        raise NotImplementedError


class TTLEviction(EvictionPolicy):
    """Rows not looked up for more than `steps` training steps are removed."""

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"TTLEviction: steps must be >= 1, got {steps}")
        self.steps = steps

    def expired(self, rows, step):
        return rows.last_seen < step - self.steps


class LRUEviction(EvictionPolicy):
    """At capacity, the least recently used rows go first (ties: the older row)."""

    capacity_bound = True

    def scores(self, rows, step):
        return rows.last_seen.double() + rows.created.double() * 1e-12


class LFUEviction(EvictionPolicy):
    """At capacity, the least frequently used rows go first (ties: least recent)."""

    capacity_bound = True

    def scores(self, rows, step):
        return rows.count.double() + rows.last_seen.double() / (2.0 * (abs(step) + 1.0))


class L2NormEviction(EvictionPolicy):
    """Rows whose L2 norm (over this shard's columns) is below `threshold` are removed.

    Under a column-wise plan each column shard judges its own columns, so use it with
    table-wise or row-wise plans."""

    def __init__(self, threshold: float) -> None:
        if threshold < 0:
            raise ValueError(f"L2NormEviction: threshold must be >= 0, got {threshold}")
        self.threshold = threshold

    def expired(self, rows, step):
        return rows.values().norm(dim=1) < self.threshold


def as_policy(policy: Optional[EvictionPolicy]) -> Optional[EvictionPolicy]:
    if policy is not None and not isinstance(policy, EvictionPolicy):
        raise TypeError(f"eviction must be an EvictionPolicy (torchrec_ext.eviction), got {type(policy).__name__}")
    return policy


__all__ = ["EvictionPolicy", "RowView", "TTLEviction", "LRUEviction", "LFUEviction", "L2NormEviction", "as_policy"]
