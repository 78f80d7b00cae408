"""Readers for the quality benchmark's real data.

* `read_ratings`: a MovieLens-style ratings file, one `user item rating [time]` per line,
  separated by `::` (ml-1m, ml-10m), a tab (ml-100k `u.data`) or a comma (ml-latest
  `ratings.csv`, whose header line is skipped). Every rating is an implicit positive.
* `read_user_item_lists`: `user item item ...` per line (the LightGCN / NGCF splits of
  Gowalla, Yelp2018, Amazon-book).
* `read_criteo`: a Criteo TSV (`label`, 13 integers, 26 hex categoricals, empty when missing).

Raw ids are mapped to dense indices in the order of their sorted raw values (users, items)
or of first appearance in the training rows (Criteo values), never by frequency: the order
decides which ids share rows in hashed / QR / mod-hash tables, and a frequency order would
hand those tables a placement no real pipeline has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

_SEP = re.compile(r"::|\t|,|\s+")


@dataclass
class Interactions:
    """Implicit feedback, split per user into train and test positives."""

    name: str
    num_users: int
    num_items: int
    train: torch.Tensor  # [N, 2] int64 (user, item)
    test: torch.Tensor   # [M, 2] int64
    valid: Optional[torch.Tensor] = None  # the split's own validation pairs, if it has them

    def tuning_split(self, seed: int = 0) -> "Interactions":
        """What learning rates are chosen on: the split's validation pairs as the test, or
        else 10% of each user's training pairs held out of training."""
        if self.valid is not None:
            return Interactions(self.name + " (valid)", self.num_users, self.num_items, self.train, self.valid)
        tr, va = _split_per_user(self.train.numpy(), 0.1, seed + 1)
        return Interactions(self.name + " (valid)", self.num_users, self.num_items,
                            torch.from_numpy(tr), torch.from_numpy(va))

    def describe(self) -> str:
        return (f"{self.name}: {self.num_users:,} users, {self.num_items:,} items, "
                f"{len(self.train):,} train / {len(self.test):,} test interactions")


def _dense(raw: np.ndarray) -> Tuple[np.ndarray, int]:
    uniq, idx = np.unique(raw, return_inverse=True)
    return idx.astype(np.int64), len(uniq)


def _split_per_user(pairs: np.ndarray, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Each user with at least 2 interactions keeps round(test_fraction * n) >= 1 of them
    (chosen at random, seeded) for test."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(pairs)), pairs[:, 0]))
    pairs = pairs[order]
    users, start, counts = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    rank = np.arange(len(pairs)) - np.repeat(start, counts)
    n_test = np.where(counts >= 2, np.maximum(1, np.rint(counts * test_fraction)), 0).astype(np.int64)
    is_test = rank < np.repeat(n_test, counts)
    return pairs[~is_test], pairs[is_test]


def _dedupe(pairs: np.ndarray) -> np.ndarray:
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def read_ratings(path: str, min_rating: float = 0.0, test_fraction: float = 0.2,
                 seed: int = 0) -> Interactions:
    users, items = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f):
            parts = [p for p in _SEP.split(line.strip()) if p]
            if len(parts) < 2:
                continue
            try:
                u, i = int(parts[0]), int(parts[1])
                r = float(parts[2]) if len(parts) > 2 else 1.0
            except ValueError:
                if line_no == 0:
                    continue  # a header line
                raise ValueError(f"{path}:{line_no + 1}: not 'user item rating': {line.strip()!r}") from None
            if r >= min_rating:
                users.append(u)
                items.append(i)
    if not users:
        raise ValueError(f"{path}: no ratings read")
    u, nu = _dense(np.asarray(users))
    i, ni = _dense(np.asarray(items))
    train, test = _split_per_user(_dedupe(np.stack([u, i], 1)), test_fraction, seed)
    return Interactions(path, nu, ni, torch.from_numpy(train), torch.from_numpy(test))


def _read_lists(path: str) -> List[Tuple[int, List[int]]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f):
            parts = line.split()
            if not parts:
                continue
            try:
                rows.append((int(parts[0]), [int(p) for p in parts[1:]]))
            except ValueError:
                raise ValueError(f"{path}:{line_no + 1}: not 'user item item ...': {line.strip()[:80]!r}") from None
    return rows


def read_user_item_lists(path: str, test_path: Optional[str] = None, test_fraction: float = 0.2,
                         seed: int = 0, valid_path: Optional[str] = None) -> Interactions:
    """With `test_path`, the files' own split; otherwise a seeded per-user split of `path`.
    `valid_path`'s pairs (the split's validation file) land in `.valid`."""
    def pairs(rows):
        out = [(u, i) for u, items in rows for i in items]
        return np.asarray(out, dtype=np.int64).reshape(-1, 2)

    parts = [pairs(_read_lists(path))]
    parts += [pairs(_read_lists(p)) for p in (test_path, valid_path) if p]
    if not len(parts[0]):
        raise ValueError(f"{path}: no interactions read")
    both = np.concatenate(parts)
    u, nu = _dense(both[:, 0])
    i, ni = _dense(both[:, 1])
    dense = np.split(np.stack([u, i], 1), np.cumsum([len(p) for p in parts])[:-1])
    if test_path is None:
        train, test = _split_per_user(_dedupe(dense[0]), test_fraction, seed)
    else:
        train, test = _dedupe(dense[0]), _dedupe(dense[1])
    name = path if test_path is None else f"{path} + {test_path}"
    valid = torch.from_numpy(_dedupe(dense[-1])) if valid_path else None
    return Interactions(name, nu, ni, torch.from_numpy(train), torch.from_numpy(test), valid)


CRITEO_DENSE, CRITEO_SPARSE = 13, 26


@dataclass
class CriteoData:
    """Criteo rows as tensors: the first (1 - test_fraction) of the rows train, the rest
    (later in time: Criteo files are chronological) test."""

    name: str
    vocab: List[int]            # rows per categorical feature (index 0: unseen / rare)
    train: Dict[str, torch.Tensor]
    test: Dict[str, torch.Tensor]

    def tuning_split(self, seed: int = 0) -> "CriteoData":
        """The training rows' last 10% as the test: what learning rates are chosen on."""
        n = len(self.train["label"])
        cut = max(1, int(n * 0.9))
        return CriteoData(self.name + " (valid)", self.vocab, {k: v[:cut] for k, v in self.train.items()},
                          {k: v[cut:] for k, v in self.train.items()})

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train['label']):,} train / {len(self.test['label']):,} test rows, "
                f"{sum(self.vocab):,} categorical values over {len(self.vocab)} features")


def read_criteo(path: str, max_rows: int = 0, test_fraction: float = 0.1,
                min_count: int = 1) -> CriteoData:
    """Values seen fewer than `min_count` times in the training rows share index 0."""
    labels, dense, cats = [], [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f):
            if max_rows and line_no >= max_rows:
                break
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 1 + CRITEO_DENSE + CRITEO_SPARSE:
                raise ValueError(f"{path}:{line_no + 1}: {len(parts)} columns, a Criteo TSV row has "
                                 f"{1 + CRITEO_DENSE + CRITEO_SPARSE}")
            labels.append(float(parts[0]))
            dense.append([float(x) if x else 0.0 for x in parts[1:1 + CRITEO_DENSE]])
            cats.append(parts[1 + CRITEO_DENSE:])
    n = len(labels)
    if n < 2:
        raise ValueError(f"{path}: fewer than 2 rows")
    n_train = max(1, min(n - 1, int(round(n * (1 - test_fraction)))))
    vocab, columns = [], []
    for j in range(CRITEO_SPARSE):
        counts: Dict[str, int] = {}
        for row in cats[:n_train]:
            counts[row[j]] = counts.get(row[j], 0) + 1
        index: Dict[str, int] = {}
        for row in cats[:n_train]:  # first appearance order
            v = row[j]
            if v not in index and counts[v] >= min_count:
                index[v] = len(index) + 1
        vocab.append(len(index) + 1)
        columns.append([index.get(row[j], 0) for row in cats])
    d = torch.tensor(dense, dtype=torch.float32).clamp_min(0).log1p()
    y = torch.tensor(labels, dtype=torch.float32)
    c = torch.tensor(columns, dtype=torch.int64).t().contiguous()  # [n, 26]

    def part(sl):
        return {"label": y[sl], "dense": d[sl], "sparse": c[sl]}

    return CriteoData(path, vocab, part(slice(0, n_train)), part(slice(n_train, n)))
