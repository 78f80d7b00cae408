"""Embedding collections of every kind the quality benchmark compares, each sized to a
memory budget: `factor` times less than the full table's `num_embeddings x dim` fp32.

A kind is a function `(specs, dim, factor, fused_params) -> nn.Module` mapping a KJT to a
KeyedTensor, like TorchRec's EBC. `embedding_bytes(module)` is what it stores for the
tables (parameters and buffers; a dynamic table's capacity rows plus its index), optimizer
state excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

import torchrec_ext as trx

INDEX_BYTES_PER_ROW = 40  # what the planner charges a dynamic row for its hash index


class BudgetError(ValueError):
    """The kind has no layout that fits the memory budget."""


@dataclass(frozen=True)
class TableSpec:
    name: str
    num_embeddings: int
    feature: str


def _configs(cls, specs, dim, **per_table):
    return [cls(name=s.name, num_embeddings=s.num_embeddings, embedding_dim=dim,
                feature_names=[s.feature], **(per_table[s.name] if s.name in per_table else {}))
            for s in specs]


def full(specs: Sequence[TableSpec], dim: int, factor: float, fused_params=None):
    return EmbeddingBagCollection(tables=_configs(EmbeddingBagConfig, specs, dim))


class ModHash(torch.nn.Module):
    """A smaller TorchRec EBC that reads id % rows: what a user does without this library."""

    def __init__(self, specs: Sequence[TableSpec], dim: int, factor: float, fused_params=None):
        super().__init__()
        rows = {s.name: max(1, math.ceil(s.num_embeddings / factor)) for s in specs}
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=s.name, num_embeddings=rows[s.name], embedding_dim=dim,
                               feature_names=[s.feature]) for s in specs])
        self.mods = {s.feature: rows[s.name] for s in specs}

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedTensor:
        mods = torch.tensor([self.mods.get(k, 1 << 62) for k in kjt.keys()], dtype=torch.int64)
        per_key = kjt.length_per_key()
        hashed = kjt.values() % torch.repeat_interleave(mods, torch.tensor(per_key))
        return self.ebc(KeyedJaggedTensor(kjt.keys(), hashed, lengths=kjt.lengths(),
                                          stride=kjt.stride()))


class LowRank(torch.nn.Module):
    """A full-height TorchRec EBC at a smaller dimension r, then a learned r -> dim map per
    table (pooling commutes with it): the other thing a user picks instead of a compressed
    table. r is the largest that fits the budget with the map."""

    def __init__(self, specs: Sequence[TableSpec], dim: int, factor: float, fused_params=None):
        super().__init__()
        ranks = {}
        for s in specs:
            r = int(s.num_embeddings * dim / factor) // (s.num_embeddings + dim)
            if r < 1:
                raise BudgetError(f"{s.name}: no rank fits 1/{factor:g} of {s.num_embeddings} x {dim}")
            ranks[s.name] = min(r, dim)
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=s.name, num_embeddings=s.num_embeddings,
                               embedding_dim=ranks[s.name], feature_names=[s.feature]) for s in specs])
        self.maps = torch.nn.ModuleDict({s.feature: torch.nn.Linear(ranks[s.name], dim, bias=False)
                                         for s in specs})

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedTensor:
        low = self.ebc(kjt).to_dict()
        keys = list(low)
        values = [self.maps[k](low[k]) for k in keys]
        return KeyedTensor(keys=keys, length_per_key=[v.shape[1] for v in values],
                           values=torch.cat(values, dim=1))


def _qr_layout(n: int, rows_budget: int) -> Dict[str, object]:
    """The QR layout (2 partitions, else 3) whose partition tables fit `rows_budget` rows in
    all, with the largest first factor (the remainder table): a mod-hash table of about the
    budget plus the small tables that tell its colliding ids apart."""
    if n <= rows_budget:
        return {"partition": "qr", "num_collisions": n}
    disc = rows_budget * rows_budget - 4 * n
    if disc >= 0:
        m = int((rows_budget + math.sqrt(disc)) // 2)
        while m > 1 and math.ceil(n / m) + m > rows_budget:
            m -= 1
        if m > 1:
            return {"partition": "qr", "num_collisions": m}
    for m1 in range(rows_budget - 2, 1, -1):  # 3 factors: m1, then a 2-factor split of n / m1
        q = math.ceil(n / m1)
        m2 = math.ceil(math.sqrt(q))
        m3 = math.ceil(q / m2)
        if m1 + m2 + m3 <= rows_budget:
            return {"partition": "generalized_qr", "factors": [m1, m2, m3]}
    raise BudgetError(f"no QR layout of {n} ids fits {rows_budget} rows")


def qr(operation: str) -> Callable:
    def build(specs: Sequence[TableSpec], dim: int, factor: float, fused_params=None):
        per = {}
        for s in specs:
            # concat gives each of k partitions dim / k columns, so k times the rows fit
            budget = max(2, int(s.num_embeddings / factor))
            layout = _qr_layout(s.num_embeddings, budget)
            if operation == "concat":
                layout = _qr_layout(s.num_embeddings, 2 * budget)
                if layout["partition"] != "qr":
                    layout = _qr_layout(s.num_embeddings, 3 * budget)
                k = 2 if layout["partition"] == "qr" else len(layout["factors"])
                layout["partition_dims"] = [dim // k + (j < dim % k) for j in range(k)]
            per[s.name] = dict(layout, operation=operation)
        return trx.QREmbeddingBagCollection(tables=_configs(trx.QREmbeddingBagConfig, specs, dim, **per))
    return build


def hashed(mode: str) -> Callable:
    def build(specs: Sequence[TableSpec], dim: int, factor: float, fused_params=None):
        per = {s.name: {"mode": mode, "compression": 1.0 / factor} for s in specs}
        return trx.HashedEmbeddingBagCollection(
            tables=_configs(trx.HashedEmbeddingBagConfig, specs, dim, **per))
    return build


def dynamic_lfu(specs: Sequence[TableSpec], dim: int, factor: float, fused_params=None):
    """Capacity: the rows whose values and index fit the budget; LFU eviction at capacity, and
    a batch's new ids beyond it read as initial values (`on_full="reject"`); the fused optimizer from `fused_params` (a dynamic table's rows are not torch params)."""
    from torchrec_ext.eviction import LFUEviction
    per = {}
    for s in specs:
        cap = max(1, int(s.num_embeddings * dim * 4 / factor) // (dim * 4 + INDEX_BYTES_PER_ROW))
        per[s.name] = {"max_capacity": cap, "initial_capacity": cap, "block_size": min(4096, cap),
                       "eviction": LFUEviction(), "on_full": "reject"}
    return trx.DynamicEmbeddingBagCollection(
        tables=_configs(trx.DynamicEmbeddingBagConfig, specs, dim, **per), fused_params=fused_params)


KINDS: Dict[str, Callable] = {
    "full": full,
    "modhash": ModHash,
    "lowrank": LowRank,
    "qr_mult": qr("mult"),
    "qr_add": qr("add"),
    "qr_concat": qr("concat"),
    "hashed_element": hashed("element"),
    "hashed_block": hashed("block"),
    "dynamic_lfu": dynamic_lfu,
}

FUSED_ONLY = {"dynamic_lfu"}  # kinds that train through fused_params, not torch.optim


def embedding_bytes(module: torch.nn.Module) -> int:
    if isinstance(module, trx.DynamicEmbeddingBagCollection):
        return sum(c.max_capacity * (c.embedding_dim * 4 + INDEX_BYTES_PER_ROW)
                   for c in module.embedding_bag_configs())
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point() and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def full_bytes(specs: Sequence[TableSpec], dim: int) -> int:
    return sum(s.num_embeddings for s in specs) * dim * 4


def build(kind: str, specs: Sequence[TableSpec], dim: int, factor: float,
          fused_params: Optional[dict] = None) -> torch.nn.Module:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return KINDS[kind](list(specs), dim, factor, fused_params)


def kinds() -> List[str]:
    return list(KINDS)
