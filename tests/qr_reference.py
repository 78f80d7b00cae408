"""Plain-PyTorch reference of a QR / compositional table, written from the paper's
definitions (Shi et al., KDD 2020) with Python integers, independent of the kernels
and of QREmbeddingBagConfig.partitions()."""

import math
from typing import List, Optional, Sequence

import torch


def partition_rows(cfg, ids: Sequence[int]) -> List[List[int]]:
    """Row of each id in each partition table, by Python integer arithmetic."""
    ids = [int(x) for x in ids]
    if cfg.partition == "qr":
        m = cfg.num_collisions or math.isqrt(cfg.num_embeddings - 1) + 1
        return [[x // m for x in ids], [x % m for x in ids]]
    fs = list(cfg.factors)
    if cfg.partition == "crt":
        return [[x % f for x in ids] for f in fs]
    rows = []
    for j, f in enumerate(fs):
        radix = math.prod(fs[:j])
        last = j == len(fs) - 1
        rows.append([x // radix if last else (x // radix) % f for x in ids])
    return rows


def composed(cfg, weights: Sequence[torch.Tensor], ids: Sequence[int]) -> torch.Tensor:
    """[len(ids), embedding_dim]: each id's vector, combined before any pooling."""
    parts = [w[torch.tensor(r, dtype=torch.long)] for w, r in zip(weights, partition_rows(cfg, ids))]
    if cfg.operation == "concat":
        return torch.cat(parts, dim=1)
    out = parts[0]
    for p in parts[1:]:
        out = out * p if cfg.operation == "mult" else out + p
    return out


def pooled(cfg, weights, ids, offsets, per_sample_weights: Optional[torch.Tensor], mean: bool):
    """[bags, embedding_dim] pooled bags of the composed vectors."""
    vecs = composed(cfg, weights, ids.tolist())
    lengths = offsets[1:] - offsets[:-1]
    bag = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    if per_sample_weights is not None:
        vecs = vecs * per_sample_weights.to(vecs.dtype).unsqueeze(1)
    out = torch.zeros(lengths.numel(), vecs.shape[1], dtype=vecs.dtype).index_add(0, bag, vecs)
    if mean:
        out = out / lengths.clamp(min=1).to(vecs.dtype).unsqueeze(1)
    return out
