"""Random jagged batches for the kernel tests, and the devices they run on."""

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


def make_batch(n, B, max_len, seed, repeat=True):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (B,), generator=g)
    lengths[0] = 0  # always one empty bag
    ids = torch.randint(0, n, (int(lengths.sum()),), generator=g)
    if repeat and ids.numel() > 3:
        ids[1] = ids[0]  # a repeated id inside a bag
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    psw = torch.rand(ids.numel(), generator=g, dtype=torch.float64) + 0.5
    return ids, offsets, psw
