"""Quality metrics, in plain torch (no scikit-learn on the benchmark's machines)."""

from __future__ import annotations

import torch


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC: the probability that a random positive outscores a random negative, ties
    counting one half (the Mann-Whitney statistic with average ranks)."""
    scores, labels = scores.double().flatten(), labels.flatten().bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs positives and negatives")
    order = torch.argsort(scores)
    s = scores[order]
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    # average the ranks of tied scores
    uniq, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    if len(uniq) < len(s):
        first = torch.cumsum(counts, 0) - counts + 1
        avg = first.double() + (counts.double() - 1) / 2
        ranks[order] = avg[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pairwise_auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Per-pair AUC of implicit feedback: pos [N], neg [N, K] (the same user's sampled
    negatives); the share of (positive, negative) pairs ordered right, ties one half."""
    d = pos.unsqueeze(1) - neg
    return float(((d > 0).double() + 0.5 * (d == 0).double()).mean())


def log_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float()))


def recall_at_k(scores: torch.Tensor, exclude: torch.Tensor, relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Per user: |top-k ∩ relevant| / |relevant|. scores [U, I]; exclude, relevant [U, I]
    bool (exclude: the user's training items, never ranked)."""
    s = scores.masked_fill(exclude, float("-inf"))
    top = s.topk(min(k, s.shape[1]), dim=1).indices
    hits = relevant.gather(1, top).sum(1).double()
    return hits / relevant.sum(1).clamp_min(1).double()
