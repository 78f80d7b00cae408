"""Feature admission for dynamic tables: which unseen ids get a row.

An id the policy has not admitted yet is looked up as its initializer value in training
(no row, no gradient update) and as `eval_value` in eval. Policies are specs set on
`DynamicEmbeddingBagConfig(admission=...)`; each table shard gets its own state from
`fresh()`. Decisions depend only on the id, the seed, the training step and what this
shard has counted, so every rank and every column shard of a table decides alike.

Subclass `AdmissionPolicy` and implement `admit` for your own policy.
"""

from __future__ import annotations

import copy
import math
from typing import Dict, Optional

import torch

from torchrec_ext.modules.dynamic.hash_table import HashTable
from torchrec_ext.ops import dynamic as dyn_ops


class AdmissionPolicy:
    """Decides, per batch, which of the ids the table does not hold get a row."""

    def fresh(self) -> "AdmissionPolicy":
        """A copy with empty state, for one table shard."""
        return copy.deepcopy(self)

    def admit(self, keys: torch.Tensor, counts: torch.Tensor, step: int) -> torch.Tensor:
        """keys: distinct ids the table does not hold; counts: their occurrences in this
        batch; step: the training step. Returns a bool mask of the ids to insert now."""
        raise NotImplementedError

    def forget(self, keys: torch.Tensor) -> None:
        """The ids got a row (or were dropped): counting state for them may go."""

    # checkpointing of per-id state (bucketed with the rows): keys and counts
    def export_counts(self):
        return None

    def import_counts(self, keys: torch.Tensor, counts: torch.Tensor) -> None:
        pass


class AlwaysAdmit(AdmissionPolicy):
    def admit(self, keys, counts, step):
        return torch.ones_like(keys, dtype=torch.bool)


class _ExactCounter:
    """Exact per-id counts in a bounded map; when full, the lowest-count half is dropped."""

    def __init__(self, capacity: int, device) -> None:
        self.capacity = capacity
        self.table = HashTable("admission counter", 0, None, device)
        self.counts = torch.zeros(0, dtype=torch.long, device=device)

    def add(self, keys: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        if len(self.table) + keys.numel() > self.capacity:
            self._shrink(keys.numel())
        rows, _ = self.table.find_or_insert(keys)
        need = self.table.rows_in_use_bound
        if self.counts.numel() < need:
            grown = torch.zeros(max(need, 2 * self.counts.numel()), dtype=torch.long, device=self.counts.device)
            grown[: self.counts.numel()] = self.counts
            self.counts = grown
        self.counts.index_add_(0, rows, counts)  # keys are distinct
        return self.counts[rows]

    def remove(self, keys: torch.Tensor) -> None:
        freed = self.table.erase(keys)
        self.counts[freed] = 0  # a reused row starts from zero

    def _shrink(self, incoming: int) -> None:
        keys, rows = self.table.export()
        keep = max(self.capacity - incoming, 0) // 2
        order = torch.argsort(self.counts[rows], descending=True, stable=True)
        self.remove(keys[order[keep:]])

    def items(self):
        keys, rows = self.table.export()
        return keys, self.counts[rows]


class _CountMinSketch:
    """Count-min sketch: estimate >= true count, and estimate <= true + epsilon * N with
    probability 1 - delta (N: total occurrences counted), for width ceil(e / epsilon) and
    depth ceil(ln(1 / delta))."""

    def __init__(self, epsilon: float, delta: float, seed: int, device) -> None:
        self.width = int(math.ceil(math.e / epsilon))
        self.depth = int(math.ceil(math.log(1.0 / delta)))
        self.seed = seed
        self.table = torch.zeros(self.depth, self.width, dtype=torch.long, device=device)

    def _cells(self, keys: torch.Tensor) -> torch.Tensor:
        out = []
        for d in range(self.depth):
            salted = keys ^ ((self.seed * 1_000_003 + d * 0x9E3779B1) & 0x7FFFFFFFFFFFFFFF)
            out.append(dyn_ops.key_hash(salted) % self.width)
        return torch.stack(out)

    def add(self, keys: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        cells = self._cells(keys)
        for d in range(self.depth):
            self.table[d].index_add_(0, cells[d], counts)
        return torch.stack([self.table[d][cells[d]] for d in range(self.depth)]).min(dim=0).values


class FrequencyAdmission(AdmissionPolicy):
    """An id gets a row once it has been seen `threshold` times (counting this batch).

    counter="exact": exact counts in a map of at most `counter_capacity` ids (when it is
    full, the lowest-count half is forgotten). counter="sketch": a count-min sketch of
    width ceil(e/epsilon) and depth ceil(ln(1/delta)); it never admits late, and admits
    early only when other ids' counts add up in every row, which happens with probability
    at most delta while the total count seen is below (threshold - true count) / epsilon.
    """

    def __init__(self, threshold: int, counter: str = "exact", counter_capacity: int = 1 << 22,
                 epsilon: float = 1e-4, delta: float = 1e-3, seed: int = 0) -> None:
        if threshold < 1:
            raise ValueError(f"FrequencyAdmission: threshold must be >= 1, got {threshold}")
        if counter not in ("exact", "sketch"):
            raise ValueError(f"FrequencyAdmission: counter must be 'exact' or 'sketch', got {counter!r}")
        if not (0 < epsilon < 1 and 0 < delta < 1):
            raise ValueError("FrequencyAdmission: epsilon and delta must lie in (0, 1)")
        self.threshold, self.counter, self.counter_capacity = threshold, counter, counter_capacity
        self.epsilon, self.delta, self.seed = epsilon, delta, seed
        self._state = None

    def fresh(self) -> "FrequencyAdmission":
        out = copy.copy(self)
        out._state = None
        return out

    def _bind(self, device):
        if self._state is None:
            self._state = (_ExactCounter(self.counter_capacity, device) if self.counter == "exact"
                           else _CountMinSketch(self.epsilon, self.delta, self.seed, device))
        return self._state

    def admit(self, keys, counts, step):
        seen = self._bind(keys.device).add(keys, counts)
        return seen >= self.threshold

    def forget(self, keys):
        if self.counter == "exact" and self._state is not None:
            self._state.remove(keys)

    def export_counts(self):
        if self.counter != "exact" or self._state is None:
            return None
        return self._state.items()

    def import_counts(self, keys, counts):
        if self.counter == "exact" and keys.numel():
            state = self._bind(keys.device)
            state.remove(keys)
            state.add(keys, counts)


class ProbabilisticAdmission(AdmissionPolicy):
    """Each sighting of an id in training admits it with probability p, decided by a hash
    of (id, seed, step): the same on every rank and column shard and in every run."""

    def __init__(self, p: float, seed: int = 0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"ProbabilisticAdmission: p must lie in [0, 1], got {p}")
        self.p, self.seed = p, seed

    def admit(self, keys, counts, step):
        salt = (self.seed * 0x2545F4914F6CDD1D + step * 0x9E3779B97F4A7C15) & 0x7FFFFFFFFFFFFFFF
        u = dyn_ops.key_hash(keys ^ salt).double() / float(2**63)
        # an id seen c times in this batch gets c chances
        return u < 1.0 - (1.0 - self.p) ** counts.double()


ADMISSION_TYPES: Dict[str, type] = {"always": AlwaysAdmit, "frequency": FrequencyAdmission,
                                    "probabilistic": ProbabilisticAdmission}


def as_policy(policy: Optional[AdmissionPolicy]) -> AdmissionPolicy:
    if policy is None:
        return AlwaysAdmit()
    if not isinstance(policy, AdmissionPolicy):
        raise TypeError(f"admission must be an AdmissionPolicy (torchrec_ext.admission), got {type(policy).__name__}")
    return policy


__all__ = ["AdmissionPolicy", "AlwaysAdmit", "FrequencyAdmission", "ProbabilisticAdmission", "ADMISSION_TYPES",
           "as_policy"]
