"""Data in the Criteo layout (label, 13 dense, 26 categorical) for the DLRM example.

* `SyntheticCriteo`: the embedded default. Deterministic global batches with power-law
  (Zipf) ids over vocabularies from 10 to 1M, and a planted signal: the label is drawn from
  sigmoid(sum of per-id effects + dense effects), so test AUC measures how well a model
  learned the ids. Ids are scattered by a fixed permutation (hot ids are not 0, 1, 2...).
* `CriteoTSV`: a streaming reader of real Criteo TSV files (label \\t 13 ints \\t 26 hex
  strings; empty fields allowed), e.g. one Criteo day.

Both yield the *global* batch of a step, and every rank keeps its slice, so a run gives
the same losses on any number of processes (what resuming on another world size needs).
Categorical ids are ints in [0, vocab) for fixed-size tables, or the raw 64-bit value
(`raw_ids=True`) for dynamic tables.
"""

from __future__ import annotations

import math
import zlib
from typing import Iterator, List, Optional

import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

DENSE = [f"int_{i}" for i in range(13)]
CATEGORICAL = [f"cat_{i}" for i in range(26)]
# Criteo-like spread of vocabulary sizes (the largest few hold almost all rows)
VOCAB = [1_000_000, 600_000, 300_000, 150_000, 80_000, 40_000, 20_000, 10_000, 5_000, 3_000,
         2_000, 1_000, 800, 500, 300, 200, 100, 80, 50, 30, 20, 15, 10, 10, 10, 10]
RAW_MUL = 0x9E3779B97F4A7C15 - 2**64  # odd: a bijection of int64, so raw ids stay distinct


def to_raw(ids: torch.Tensor, feature: int) -> torch.Tensor:
    """The 64-bit id a hashing tokenizer would give (for dynamic tables)."""
    return (ids + feature * 2**40) * RAW_MUL


def make_batch(dense: torch.Tensor, cats: List[torch.Tensor], labels: torch.Tensor, lo: int, hi: int) -> Batch:
    values = torch.cat([c[lo:hi] for c in cats])
    lengths = torch.ones(len(cats) * (hi - lo), dtype=torch.long)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=CATEGORICAL, values=values, lengths=lengths)
    return Batch(dense_features=dense[lo:hi], sparse_features=kjt, labels=labels[lo:hi])


class SyntheticCriteo:
    def __init__(self, global_batch: int, vocab: Optional[List[int]] = None, alpha: float = 1.1,
                 seed: int = 0, raw_ids: Optional[List[bool]] = None) -> None:
        self.global_batch, self.alpha, self.seed = global_batch, alpha, seed
        self.vocab = list(vocab or VOCAB)
        self.raw_ids = raw_ids or [False] * len(self.vocab)
        g = torch.Generator().manual_seed(seed)
        self._cdf, self._perm, self._effect = [], [], []
        for n in self.vocab:
            w = torch.arange(1, n + 1, dtype=torch.float64).pow(-alpha)
            cdf = torch.cumsum(w, 0)
            self._cdf.append(cdf / cdf[-1].clone())
            self._perm.append(torch.randperm(n, generator=g))
            self._effect.append(torch.randn(n, generator=g))  # each id's true effect
        self._feature_weight = torch.rand(len(self.vocab), generator=g) * 0.6 + 0.2
        self._dense_weight = torch.randn(len(DENSE), generator=g) * 0.3

    def global_step(self, step: int, split: str = "train"):
        """(dense [B, 13], per-feature ids [B] each, labels [B]) of one global batch."""
        g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{split}/{step}".encode()))
        B = self.global_batch
        dense_raw = torch.exp(torch.randn(B, len(DENSE), generator=g) * 1.5)  # heavy-tailed counts
        dense = torch.log1p(dense_raw)
        logit = (dense - dense.mean(dim=0)) @ self._dense_weight
        cats = []
        for f, n in enumerate(self.vocab):
            rank = torch.searchsorted(self._cdf[f], torch.rand(B, generator=g, dtype=torch.float64))
            ids = self._perm[f][rank.clamp_(max=n - 1)]
            logit = logit + self._feature_weight[f] * self._effect[f][ids]
            cats.append(to_raw(ids, f) if self.raw_ids[f] else ids)
        labels = torch.bernoulli(torch.sigmoid(logit / 1.5 - 0.5), generator=g)
        return dense, cats, labels

    def batches(self, rank: int, world_size: int, start: int, steps: int, split: str = "train") -> Iterator[Batch]:
        per = self.global_batch // world_size
        for s in range(start, start + steps):
            dense, cats, labels = self.global_step(s, split)
            yield make_batch(dense, cats, labels, rank * per, (rank + 1) * per)


class CriteoTSV:
    """Streams Criteo TSV lines into global batches; ids become `int(hex, 16) % vocab`
    (or the raw value for dynamic tables). Evaluation reads its own files (--test-data)."""

    def __init__(self, paths: List[str], global_batch: int, vocab: Optional[List[int]] = None,
                 raw_ids: Optional[List[bool]] = None) -> None:
        self.paths, self.global_batch = paths, global_batch
        self.vocab = list(vocab or VOCAB)
        self.raw_ids = raw_ids or [False] * len(self.vocab)

    def _lines(self) -> Iterator[str]:
        for p in self.paths:
            with open(p) as f:
                yield from f

    def _parse(self, lines: List[str]):
        B = len(lines)
        dense = torch.zeros(B, len(DENSE))
        cats = [torch.zeros(B, dtype=torch.long) for _ in CATEGORICAL]
        labels = torch.zeros(B)
        for i, line in enumerate(lines):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 1 + len(DENSE) + len(CATEGORICAL):
                raise ValueError(f"Criteo TSV: line with {len(fields)} fields, expected 40: {line[:80]!r}")
            labels[i] = float(fields[0] or 0)
            for j in range(len(DENSE)):
                v = fields[1 + j]
                dense[i, j] = math.log1p(max(int(v), 0)) if v else 0.0
            for j in range(len(CATEGORICAL)):
                v = fields[1 + len(DENSE) + j]
                x = int(v, 16) if v else 0
                cats[j][i] = x if self.raw_ids[j] else x % self.vocab[j]
        return dense, cats, labels

    def batches(self, rank: int, world_size: int, start: int, steps: int, split: str = "train") -> Iterator[Batch]:
        per = self.global_batch // world_size
        buf: List[str] = []
        step = 0
        for line in self._lines():
            buf.append(line)
            if len(buf) < self.global_batch:
                continue
            if step >= start:
                dense, cats, labels = self._parse(buf)
                yield make_batch(dense, cats, labels, rank * per, (rank + 1) * per)
            buf, step = [], step + 1
            if step >= start + steps:
                return
