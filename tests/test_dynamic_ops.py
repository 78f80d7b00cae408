"""Dynamic-table row ops against plain PyTorch, on every device."""


import pytest
import torch

from batches import DEVICES, make_batch
from torchrec_ext.initializers import Constant, Normal, TruncatedNormal, Uniform
from torchrec_ext.ops import dynamic as dyn

ops = torch.ops.torchrec_ext


def reference_bags(table, rows, offsets, psw, mean, missing):
    """Plain PyTorch: rows -1 read as `missing` in every column."""
    vals = torch.where((rows < 0).unsqueeze(1), torch.full_like(table[:1], missing).expand(rows.numel(), -1),
                       table[rows.clamp(min=0)])
    if psw is not None:
        vals = vals * psw.unsqueeze(1)
    out = []
    for b in range(offsets.numel() - 1):
        s, e = int(offsets[b]), int(offsets[b + 1])
        v = vals[s:e].sum(0)
        out.append(v / (e - s) if (mean and e > s) else v)
    return torch.stack(out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_bag_forward_backward_match_plain_pytorch(device, mean, weighted):
    bs, nblocks, dim = 7, 5, 6
    table = torch.randn(bs * nblocks, dim, dtype=torch.float64)
    ids, offsets, psw = make_batch(bs * nblocks + 1, 9, 6, seed=3)
    rows = ids - 1  # row -1: a key the table does not hold
    psw = psw if weighted else None
    blocks = [table[i * bs:(i + 1) * bs].float().to(device).requires_grad_() for i in range(nblocks)]
    p1 = psw.float().to(device).requires_grad_() if weighted else None
    out = dyn.dynamic_bag(blocks, rows.to(device), offsets.to(device), p1, int(mean), missing_value=0.25)
    t2 = table.clone().requires_grad_()
    p2 = psw.clone().requires_grad_() if weighted else None
    expect = reference_bags(t2, rows, offsets, p2, mean, 0.25)
    torch.testing.assert_close(out.cpu().double(), expect, rtol=1e-5, atol=1e-5)
    g = torch.randn(out.shape, dtype=torch.float64)
    (out * g.to(device).float()).sum().backward()
    (expect * g).sum().backward()
    torch.testing.assert_close(torch.cat([b.grad.cpu() for b in blocks]).double(), t2.grad, rtol=1e-5, atol=1e-5)
    if weighted:
        torch.testing.assert_close(p1.grad.cpu().double(), p2.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_returns_only_touched_rows_summed(device):
    blocks = [torch.zeros(4, 3, device=device) for _ in range(3)]
    rows = torch.tensor([9, 2, 9, -1, 2, 9], device=device)
    offsets = torch.tensor([0, 3, 6], device=device)
    go = torch.tensor([[1.0, 2, 3], [10, 20, 30]], device=device)
    urows, grads, _ = ops.dynamic_bag_backward(go, blocks, rows, offsets, None, 0, 0.0, False)
    assert urows.tolist() == [2, 9]
    torch.testing.assert_close(grads.cpu(), torch.tensor([[11.0, 22, 33], [12, 24, 36]]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_accumulates_in_float(device, dtype):
    table = torch.randn(16, 8)
    blocks = [table[:8].to(device, dtype), table[8:].to(device, dtype)]
    rows = torch.tensor([0, 15, 3, 3], device=device)
    out = ops.dynamic_bag_forward(blocks, rows, torch.tensor([0, 2, 4], device=device), None, 0, 0.0)
    assert out.dtype == torch.float32
    expect = reference_bags(table.to(dtype).float(), rows.cpu(), torch.tensor([0, 2, 4]), None, False, 0.0)
    torch.testing.assert_close(out.cpu(), expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_gather_scatter_round_trip(device):
    blocks = [torch.zeros(4, 3, device=device) for _ in range(3)]
    rows = torch.tensor([11, 0, 5], device=device)
    vals = torch.arange(9.0, device=device).view(3, 3)
    ops.block_rows_scatter_(blocks, rows, vals, 1.0, False)
    torch.testing.assert_close(ops.block_rows_gather(blocks, rows), vals)
    ops.block_rows_scatter_(blocks, rows, vals, -0.5, True)
    torch.testing.assert_close(ops.block_rows_gather(blocks, rows), vals * 0.5)
    assert float(blocks[0][1:].abs().sum() + blocks[1][[0, 2, 3]].abs().sum()) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_rows_outside_the_blocks_are_refused(device):
    blocks = [torch.zeros(4, 3, device=device)]
    with pytest.raises(RuntimeError, match=r"rows must lie in \[-1, 4\), got \[0, 4\]"):
        ops.dynamic_bag_forward(blocks, torch.tensor([0, 4], device=device),
                                torch.tensor([0, 2], device=device), None, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"rows must lie in \[0, 4\)"):
        ops.block_rows_gather(blocks, torch.tensor([-1], device=device))


def init_values(initializer, keys, dim, seed=5, col_offset=0, device="cpu"):
    blocks = [torch.zeros(keys.numel(), dim, device=device)]
    kind, a, b = initializer.native()
    ops.block_rows_init_(blocks, torch.arange(keys.numel(), device=device), keys.to(device), kind, a, b, seed,
                         col_offset)
    return blocks[0].cpu()


@pytest.mark.parametrize("device", DEVICES)
def test_initializers_have_their_distribution_and_depend_on_key_and_column_only(device):
    keys = torch.arange(-20000, 20000) * 1_000_003
    u = init_values(Uniform(-0.3, 0.1), keys, 4, device=device)
    assert u.min() >= -0.3 and u.max() <= 0.1
    assert abs(float(u.mean()) + 0.1) < 0.005 and abs(float(u.var()) - 0.4**2 / 12) < 0.001
    n = init_values(Normal(1.0, 2.0), keys, 4, device=device)
    assert abs(float(n.mean()) - 1.0) < 0.03 and abs(float(n.std()) - 2.0) < 0.03
    t = init_values(TruncatedNormal(0.0, 0.5), keys, 4, device=device)
    # N(0, 1) truncated at +-2 has std 0.8796
    assert t.abs().max() <= 1.0 and abs(float(t.std()) - 0.5 * 0.8796) < 0.01
    assert torch.equal(init_values(Constant(0.7), keys[:5], 3, device=device), torch.full((5, 3), 0.7))
    # the same key gets the same vector whatever its position; columns 2..3 of a dim-4
    # row are a dim-2 row at col_offset 2 (a column shard)
    perm = torch.randperm(keys.numel())
    torch.testing.assert_close(init_values(Normal(), keys[perm], 4, device=device), init_values(Normal(), keys, 4)[perm])
    torch.testing.assert_close(init_values(Normal(), keys, 2, col_offset=2, device=device),
                               init_values(Normal(), keys, 4)[:, 2:])
    assert not torch.equal(init_values(Normal(), keys, 4, seed=6), init_values(Normal(), keys, 4))


def test_key_hash_spreads_keys_evenly_over_buckets():
    keys = torch.arange(0, 64_000)  # consecutive ids, the worst case for a modulo
    counts = torch.bincount(dyn.key_hash(keys) % 64, minlength=64).float()
    assert float(counts.min()) > 0.85 * 1000 and float(counts.max()) < 1.15 * 1000
    assert bool((dyn.key_hash(torch.tensor([-(2**63), 2**63 - 1, -1])) >= 0).all())


def test_ops_pass_opcheck():
    blocks = [torch.randn(4, 3), torch.randn(4, 3)]
    rows = torch.tensor([1, 7, -1, 2])
    offsets = torch.tensor([0, 1, 4])
    psw = torch.rand(4)
    torch.library.opcheck(ops.dynamic_bag_forward, (blocks, rows, offsets, psw, 0, 0.5))
    torch.library.opcheck(ops.block_rows_gather, (blocks, torch.tensor([0, 7])))
    torch.library.opcheck(ops.dynamic_key_hash, (torch.tensor([3, -4]),))
    slots_k, slots_r = torch.zeros(16, dtype=torch.long), torch.full((16,), -1)
    torch.library.opcheck(ops.hash_index_find, (slots_k, slots_r, torch.tensor([1, 2])))
    torch.library.opcheck(ops.hash_index_rehash, (slots_k, slots_r, 32))

