"""The hashed tables' positions cache: the forward pass keeps where each id's blocks lie
(hashed_bags_keep) and the backward ops read them instead of hashing again. The step
must equal the reference's, the cache must say where the kernel read, and a cache
that is not the call's must raise without writing outside the buffers."""

import hashed_reference as ref
import pytest
import torch
from batches import DEVICES, make_batch

from torchrec_ext import HashedEmbeddingBagConfig
from torchrec_ext.modules.hashed import shard_layout
from torchrec_ext.ops import hashed_bag, hashed_bags, hashed_bags_backward, hashed_bags_keep, hashed_bags_sgd_

_POS_MASK = (1 << 62) - 1


def _tables():
    """Block tables of 4, 2 and 1 blocks per id (one wraps blocks into the next slot,
    one is the second row shard of a 2-way plan) and an element-mode table, in one call."""
    cfgs = [HashedEmbeddingBagConfig(name="a", num_embeddings=997, embedding_dim=16, compression=0.05,
                                     row_regions=4, seed=1, chunk_size=4, signed=True),
            HashedEmbeddingBagConfig(name="b", num_embeddings=300, embedding_dim=8, compression=0.1,
                                     row_regions=2, seed=2, mode="element", signed=True),
            HashedEmbeddingBagConfig(name="c", num_embeddings=500, embedding_dim=16, compression=0.05,
                                     chunk_size=8, block_align=1, seed=3),
            HashedEmbeddingBagConfig(name="d", num_embeddings=4000, embedding_dim=32, compression=0.02,
                                     row_regions=4, seed=4, signed=True)]
    shard_d = 2 * cfgs[3].slots  # rows of the first shard of d
    layouts = [shard_layout(c) for c in cfgs[:3]] + [shard_layout(cfgs[3], row_offset=shard_d)]
    local_rows = [c.num_embeddings for c in cfgs[:3]] + [2 * cfgs[3].rows_per_region]
    ws = [torch.randn(c.buffer_rows, c.embedding_dim, dtype=torch.float64) for c in cfgs]
    ws[3] = ws[3][shard_d:].contiguous()
    bags = [11, 9, 13, 8]
    batch = [make_batch(n, B, 6, seed=40 + t) for t, (n, B) in enumerate(zip(local_rows, bags))]
    ids = torch.cat([b[0] for b in batch])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long)] +
                        [b[1][1:] + sum(len(x[0]) for x in batch[:t]) for t, b in enumerate(batch)])
    psw = torch.cat([b[2] for b in batch]).float().double()  # the kernels read weights as fp32
    table_bags = [0] + torch.tensor(bags).cumsum(0).tolist()
    # what the reference needs per table: global ids, bag offsets, row offset
    per_table = [(b[0].numpy() + (2 * cfgs[3].rows_per_region if t == 3 else 0), b[1],
                  dict(row_offset=shard_d) if t == 3 else {}) for t, b in enumerate(batch)]
    return cfgs, layouts, ws, ids, offsets, psw, table_bags, per_table


@pytest.mark.parametrize("pooling", [0, 1], ids=["sum", "mean"])
@pytest.mark.parametrize("device", DEVICES)
def test_kept_positions_give_the_reference_gradient_and_step(pooling, device):
    cfgs, layouts, ws, ids, offsets, psw, table_bags, per_table = _tables()
    poolings = [pooling] * 4
    gos = [torch.randn(table_bags[t + 1] - table_bags[t], c.embedding_dim, dtype=torch.float64)
           for t, c in enumerate(cfgs)]
    ref_w = [w.clone().requires_grad_() for w in ws]
    ref_p = psw.clone().requires_grad_()
    ends = [0] + [len(g) for g, _, _ in per_table]
    ends = torch.tensor(ends).cumsum(0).tolist()
    ref_out = [ref.pooled(c, ref_w[t], g, o, ref_p[ends[t]:ends[t + 1]], mean=pooling == 1, **kw)
               for t, (c, (g, o, kw)) in enumerate(zip(cfgs, per_table))]
    sum((r * g).sum() for r, g in zip(ref_out, gos)).backward()

    dev = lambda x: x.to(device)  # noqa: E731
    outs, positions = hashed_bags_keep([dev(w) for w in ws], dev(ids), dev(offsets), dev(psw), table_bags,
                                       poolings, layouts)
    for out, r in zip(outs, ref_out):
        torch.testing.assert_close(out.cpu(), r.detach())
    # CPU keeps the most blocks per id of the call's block tables (table a: 4); CUDA keeps none
    assert positions.shape == ((ids.numel() if device == "cpu" else 0), 4)

    gw, gpsw = hashed_bags_backward([dev(g) for g in gos], [dev(w) for w in ws], dev(ids), dev(offsets),
                                    dev(psw), table_bags, poolings, layouts, True, positions)
    for g, r in zip(gw, ref_w):
        torch.testing.assert_close(g.cpu(), r.grad)
    torch.testing.assert_close(gpsw.cpu().double(), ref_p.grad, rtol=1e-5, atol=1e-6)

    stepped = [dev(w.clone()) for w in ws]
    gpsw = hashed_bags_sgd_(stepped, [dev(g) for g in gos], dev(ids), dev(offsets), dev(psw), table_bags,
                            poolings, layouts, 0.5, True, positions)
    for w, w0, r in zip(stepped, ws, ref_w):
        torch.testing.assert_close(w.cpu(), w0 - 0.5 * r.grad)
    torch.testing.assert_close(gpsw.cpu().double(), ref_p.grad, rtol=1e-5, atol=1e-6)


def test_a_kept_word_names_the_first_element_of_its_block_and_its_sign():
    """Read through the kernel from a buffer whose elements hold their own positions:
    column c * Z of an id's output is where its block c starts, which is what the word
    says (bits 0..61), and bit 63 is the block's sign."""
    D, Z = 32, 8
    for signed in (False, True):
        cfg = HashedEmbeddingBagConfig(name="t", num_embeddings=3000, embedding_dim=D, chunk_size=Z,
                                       block_align=1, compression=0.03, row_regions=2, seed=5, signed=signed)
        w = torch.arange(1, cfg.buffer_rows * D + 1, dtype=torch.float64).view(-1, D)  # 1-based: sign shows
        ids = torch.arange(0, 3000, 3)
        offsets = torch.arange(ids.numel() + 1)
        read = hashed_bag(w, ids, offsets, None, 0, shard_layout(cfg))[:, ::Z].long()
        _, positions = hashed_bags_keep([w], ids, offsets, None, [0, ids.numel()], [0], [shard_layout(cfg)])
        words = positions.view(torch.int64)
        assert torch.equal((words & _POS_MASK) + 1, read.abs())
        assert torch.equal(words < 0, read < 0)  # bit 63
        assert bool((read < 0).any()) == signed


def test_no_cache_for_element_mode_or_without_a_backward_pass():
    cfg = HashedEmbeddingBagConfig(name="e", num_embeddings=100, embedding_dim=8, mode="element")
    w = torch.randn(cfg.buffer_rows, 8)
    ids, offsets, _ = make_batch(100, 5, 4, seed=2)
    outs, positions = hashed_bags_keep([w], ids, offsets, None, [0, 5], [0], [shard_layout(cfg)])
    assert positions.numel() == 0
    torch.testing.assert_close(outs[0], hashed_bags([w], ids, offsets, None, [0, 5], [0], [shard_layout(cfg)])[0])


def test_a_cache_that_is_not_the_calls_raises():
    cfgs, layouts, ws, ids, offsets, psw, table_bags, _ = _tables()
    _, positions = hashed_bags_keep(ws, ids, offsets, None, table_bags, [0] * 4, layouts)
    gos = [torch.randn(table_bags[t + 1] - table_bags[t], c.embedding_dim, dtype=torch.float64)
           for t, c in enumerate(cfgs)]
    args = (gos, ids, offsets, None, table_bags, [0] * 4, layouts, 0.1, False)
    with pytest.raises(RuntimeError, match="positions must be empty or a contiguous int64"):
        hashed_bags_sgd_([w.clone() for w in ws], *args, positions[:-1])
    with pytest.raises(RuntimeError, match="positions has 3 columns, table 0 has 4 blocks per id"):
        hashed_bags_sgd_([w.clone() for w in ws], *args, positions[:, :3].contiguous())
    # a word past its buffer (table d's ids start at row ends[3]): refused, nothing written past the end
    bad = positions.clone()
    first_d = int(offsets[table_bags[3]])
    bad[first_d, 0] = ws[3].numel() - 1  # a block of 32 from the last element runs off the buffer
    padded = [torch.cat([w, torch.full((1, w.shape[1]), 7.0, dtype=w.dtype)]) for w in ws]
    views = [p[:-1] for p in padded]  # contiguous prefixes: a write past the end lands in the padding
    with pytest.raises(RuntimeError, match="positions hold blocks outside the buffers"):
        hashed_bags_sgd_(views, *args, bad)
    for p in padded:
        assert bool((p[-1] == 7.0).all())


def test_opcheck_keep_and_backward_with_positions():
    cfgs = [HashedEmbeddingBagConfig(name="a", num_embeddings=200, embedding_dim=8, row_regions=2, chunk_size=4),
            HashedEmbeddingBagConfig(name="b", num_embeddings=50, embedding_dim=4, mode="element", seed=1)]
    ws = [torch.randn(c.buffer_rows, c.embedding_dim) for c in cfgs]
    ids, offsets, psw = make_batch(50, 6, 4, seed=1)
    static = ([0, 2, 6], [0, 1], [v for c in cfgs for v in shard_layout(c).args()])
    torch.library.opcheck(torch.ops.torchrec_ext.hashed_bags_forward_keep.default,
                          (ws, ids, offsets, psw.float(), *static))
    _, positions = torch.ops.torchrec_ext.hashed_bags_forward_keep(ws, ids, offsets, psw.float(), *static)
    assert positions.shape == (ids.numel(), 2)
    gos = [torch.randn(2, 8), torch.randn(4, 4)]
    torch.library.opcheck(torch.ops.torchrec_ext.hashed_bags_backward.default,
                          (gos, ws, ids, offsets, psw.float(), *static, True, positions))
    torch.library.opcheck(torch.ops.torchrec_ext.hashed_bags_sgd_.default,
                          ([w.clone() for w in ws], gos, ids, offsets, psw.float(), *static, 0.1, True, positions))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_keeps_nothing_and_refuses_a_full_cache():
    cfg = HashedEmbeddingBagConfig(name="t", num_embeddings=100, embedding_dim=8, chunk_size=4)
    w = torch.randn(cfg.buffer_rows, 8, device="cuda")
    ids, offsets, _ = make_batch(100, 5, 4, seed=3)
    ids, offsets = ids.cuda(), offsets.cuda()
    _, positions = hashed_bags_keep([w], ids, offsets, None, [0, 5], [0], [shard_layout(cfg)])
    assert positions.numel() == 0
    full = torch.zeros(ids.numel(), 2, dtype=torch.int64, device="cuda")
    with pytest.raises(RuntimeError, match="the CUDA kernels keep no positions"):
        hashed_bags_sgd_([w], [torch.randn(5, 8, device="cuda")], ids, offsets, None, [0, 5], [0],
                         [shard_layout(cfg)], 0.1, False, full)
