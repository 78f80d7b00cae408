"""An independent NumPy/PyTorch statement of what a hashed table computes.

The hash is re-derived here from its definition (MurmurHash3 fmix64 over
(id, column-or-block, seed)); the pooled lookup is a dense one-hot bag matrix times the
materialised virtual rows, so autograd of plain torch ops gives the reference gradients.
"""

from __future__ import annotations

import numpy as np
import torch

MASK = (1 << 64) - 1
K_SEED, K_COL, K_ADD = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9


def fmix64(k: np.ndarray) -> np.ndarray:
    k = k.astype(np.uint64)
    with np.errstate(over="ignore"):
        k ^= k >> np.uint64(33)
        k *= np.uint64(0xFF51AFD7ED558CCD)
        k ^= k >> np.uint64(33)
        k *= np.uint64(0xC4CEB9FE1A85EC53)
        k ^= k >> np.uint64(33)
    return k


def col_hash(ids: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    h0 = fmix64(ids.astype(np.int64).view(np.uint64) ^ np.uint64((seed * K_SEED) & MASK))
    colmix = np.array([(int(c) * K_COL + K_ADD) & MASK for c in cols.ravel()], dtype=np.uint64)
    return fmix64(h0[:, None] ^ colmix.reshape(cols.shape)[None, :])


def positions(cfg, ids: np.ndarray, row_offset: int = 0, col_offset: int = 0, local_cols=None):
    """(buffer rows, buffer cols, signs) of every element of the given global ids."""
    D = cfg.embedding_dim if local_cols is None else local_cols
    L, rpr = cfg.slots, cfg.rows_per_region
    region = ids // rpr - (row_offset // L)
    j = np.arange(D) + col_offset
    if cfg.mode == "element":
        h = col_hash(ids, j, cfg.seed)
        rows = region[:, None] * L + ((h & np.uint64((1 << 63) - 1)) % np.uint64(L)).astype(np.int64)
        cols = np.broadcast_to(np.arange(D), rows.shape)
    else:
        Z = cfg.chunk
        blocks = j // Z
        h = col_hash(ids, blocks, cfg.seed)
        A = cfg.align
        f = ((h & np.uint64((1 << 63) - 1)) % np.uint64(L * Z // A)).astype(np.int64) * A
        f = (f + (j % Z)[None, :]) % (L * Z)
        rows = region[:, None] * L + f // Z
        cols = ((blocks - col_offset // Z) * Z)[None, :] + f % Z
    sign = np.where((h >> np.uint64(63)).astype(bool) & cfg.signed, -1.0, 1.0)
    return rows, np.ascontiguousarray(cols), sign


def virtual_rows(cfg, weight: torch.Tensor, ids: np.ndarray, **kw) -> torch.Tensor:
    rows, cols, sign = positions(cfg, ids, **kw)
    return weight[torch.from_numpy(rows), torch.from_numpy(cols)] * torch.from_numpy(sign).to(weight.dtype)


def pooled(cfg, weight, ids, offsets, psw=None, mean=False, **kw) -> torch.Tensor:
    """Pooled bags by a dense bag matrix: out[b] = scale_b * sum_i w_i * row(id_i)."""
    ids_np = np.asarray(ids, dtype=np.int64)
    rows = virtual_rows(cfg, weight, ids_np, **kw) if len(ids_np) else weight.new_zeros(0, weight.shape[1] if 'local_cols' not in kw else kw['local_cols'])
    B = len(offsets) - 1
    bag = torch.zeros(B, len(ids_np), dtype=weight.dtype)
    for b in range(B):
        s, e = int(offsets[b]), int(offsets[b + 1])
        if e > s:
            bag[b, s:e] = 1.0 / (e - s) if mean else 1.0
    if psw is not None:
        rows = rows * psw.to(weight.dtype)[:, None]
    return bag @ rows
