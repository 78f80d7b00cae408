"""One training run of one (model, kind, budget, seed): train, then evaluate."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from .data import CriteoData, Interactions
from .metrics import auc, log_loss, pairwise_auc, recall_at_k
from .models import DLRM, MatrixFactorization
from .tables import FUSED_ONLY

logger = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    dim: int = 64
    epochs: int = 5
    batch_size: int = 2048
    lr: float = 1e-3
    negatives: int = 4          # MF: sampled negatives per positive in training
    eval_negatives: int = 10    # MF: sampled negatives per test positive for AUC
    eval_users: int = 3000      # MF: users ranked against every item for recall@k
    k: int = 20
    large: int = 1000           # DLRM: features with at least this many values are compressed
    max_steps: int = 0          # 0: whole epochs


def _fused_params(kind: str, lr: float) -> Optional[dict]:
    if kind not in FUSED_ONLY:
        return None
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    return {"optimizer": EmbOptimType.ADAM, "learning_rate": lr}


class _NoParams:
    def zero_grad(self) -> None:
        pass

    def step(self) -> None:
        pass


def _optimizer(model: torch.nn.Module, lr: float):
    """Adam over the torch parameters; none left when every table trains fused."""
    params = [p for p in model.parameters() if p.requires_grad and p.numel() > 0]
    return torch.optim.Adam(params, lr=lr) if params else _NoParams()


def _train(model: torch.nn.Module, n: int, loss_of, opt: TrainOptions, gen: torch.Generator):
    """`opt.epochs` shuffled passes over n examples (or `opt.max_steps` steps); returns
    (steps, seconds)."""
    optim = _optimizer(model, opt.lr)
    model.train()
    t0, steps = time.perf_counter(), 0
    for _ in range(opt.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, opt.batch_size):
            loss = loss_of(order[start:start + opt.batch_size])
            optim.zero_grad()
            loss.backward()
            optim.step()
            steps += 1
            if opt.max_steps and steps >= opt.max_steps:
                return steps, time.perf_counter() - t0
    return steps, time.perf_counter() - t0


def _user_item_matrix(pairs: torch.Tensor, users: torch.Tensor, num_items: int) -> torch.Tensor:
    """Bool [len(users), num_items]: pairs (u, i) restricted to `users` (in that order)."""
    pos = torch.full((int(pairs[:, 0].max()) + 1 if len(pairs) else 1,), -1, dtype=torch.int64)
    pos[users] = torch.arange(len(users))
    rows = pos[pairs[:, 0].clamp_max(len(pos) - 1)]
    keep = (pairs[:, 0] < len(pos)) & (rows >= 0)
    m = torch.zeros(len(users), num_items, dtype=torch.bool)
    m[rows[keep], pairs[keep, 1]] = True
    return m


def _sample_negatives(pairs: torch.Tensor, known: torch.Tensor, num_items: int, k: int,
                      gen: torch.Generator) -> torch.Tensor:
    """[len(pairs), k] items the pair's user has no interaction with (sorted `known` holds
    u * num_items + i of every interaction); a few redraws, then whatever came up."""
    users = pairs[:, 0:1].expand(-1, k)
    neg = torch.randint(num_items, (len(pairs), k), generator=gen)
    for _ in range(10):
        key = users * num_items + neg
        idx = torch.searchsorted(known, key).clamp_max(len(known) - 1)
        bad = known[idx] == key
        if not bad.any():
            break
        neg[bad] = torch.randint(num_items, (int(bad.sum()),), generator=gen)
    return neg


def run_mf(data: Interactions, kind: str, factor: float, seed: int, opt: TrainOptions) -> Dict[str, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MatrixFactorization(kind, data.num_users, data.num_items, opt.dim, factor,
                                _fused_params(kind, opt.lr))
    train = data.train

    def loss_of(idx):
        batch = train[idx]
        neg = torch.randint(data.num_items, (len(batch), opt.negatives), generator=gen)
        scores = model(batch[:, 0], torch.cat([batch[:, 1:2], neg], dim=1))
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1
        return torch.nn.functional.binary_cross_entropy_with_logits(scores, labels)

    steps, train_s = _train(model, len(train), loss_of, opt, gen)
    model.eval()
    with torch.no_grad():
        known = torch.sort(torch.cat([data.train, data.test])[:, 0] * data.num_items
                           + torch.cat([data.train, data.test])[:, 1]).values
        eval_gen = torch.Generator().manual_seed(1000 + seed)
        neg = _sample_negatives(data.test, known, data.num_items, opt.eval_negatives, eval_gen)
        pos_s = model(data.test[:, 0], data.test[:, 1:2]).squeeze(1)
        neg_s = model(data.test[:, 0], neg)
        test_users = torch.unique(data.test[:, 0])
        pick = torch.randperm(len(test_users), generator=eval_gen)[: opt.eval_users]
        users = test_users[pick].sort().values
        items = model.item_vectors(torch.arange(data.num_items))
        recalls = []
        for start in range(0, len(users), 500):
            u = users[start:start + 500]
            scores = model.user_vectors(u) @ items.t()
            recalls.append(recall_at_k(scores, _user_item_matrix(data.train, u, data.num_items),
                                       _user_item_matrix(data.test, u, data.num_items), opt.k))
    return {"auc": pairwise_auc(pos_s, neg_s), f"recall@{opt.k}": float(torch.cat(recalls).mean()),
            "embedding_bytes": model.embedding_bytes(), "train_s": train_s, "steps": steps}


def run_dlrm(data: CriteoData, kind: str, factor: float, seed: int, opt: TrainOptions) -> Dict[str, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DLRM(kind, data.vocab, opt.dim, factor, opt.large, data.train["dense"].shape[1],
                 _fused_params(kind, opt.lr))
    tr = data.train

    def loss_of(idx):
        logits = model(tr["dense"][idx], tr["sparse"][idx])
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, tr["label"][idx])

    steps, train_s = _train(model, len(tr["label"]), loss_of, opt, gen)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(data.test["dense"][s:s + 8192], data.test["sparse"][s:s + 8192])
                            for s in range(0, len(data.test["label"]), 8192)])
    y = data.test["label"]
    return {"auc": auc(logits, y), "log_loss": log_loss(logits, y),
            "embedding_bytes": model.embedding_bytes(), "train_s": train_s, "steps": steps}
