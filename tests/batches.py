"""Random jagged batches for the kernel tests, the devices they run on, and the check
of a kernel against its float64 reference."""

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


def assert_kernel_matches_reference(kernel, reference, weights, ids, offsets, psw, device,
                                    psw_rtol, psw_atol=None):
    """kernel(weights, ids, offsets, psw) on `device` against reference(weights, psw) in
    float64: outputs (the first bag is empty), every weight's gradient, and the
    per-sample-weight gradient. float32 on CUDA (its atomics), float64 on CPU for a tight
    comparison; psw_atol defaults to ten times the output tolerance."""
    dtype = torch.float32 if device == "cuda" else torch.float64
    w1 = [w.detach().to(device, dtype).clone().requires_grad_() for w in weights]
    p1 = psw.to(device).float().requires_grad_() if psw is not None else None
    out = kernel(w1, ids.to(device), offsets.to(device), p1)
    w2 = [w.detach().clone().requires_grad_() for w in weights]
    p2 = psw.clone().requires_grad_() if psw is not None else None
    expect = reference(w2, p2)
    # float32 per-sample weights inside the kernel limit agreement to ~1e-7 relative
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.cpu().double(), expect, rtol=tol, atol=tol)
    assert out[0].abs().sum() == 0  # the empty bag

    g = torch.randn(out.shape, dtype=torch.float64)
    (out * g.to(device, dtype)).sum().backward()
    (expect * g).sum().backward()
    for a, b in zip(w1, w2):
        torch.testing.assert_close(a.grad.cpu().double(), b.grad, rtol=tol, atol=tol)
    if psw is not None:
        torch.testing.assert_close(p1.grad.cpu().double(), p2.grad, rtol=psw_rtol,
                                   atol=psw_atol if psw_atol is not None else tol * 10)
