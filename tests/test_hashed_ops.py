"""Hashed-table kernels against the independent reference in hashed_reference.py."""

import hashed_reference as ref
import pytest
import torch
from batches import DEVICES, assert_kernel_matches_reference, make_batch

from torchrec_ext import HashedEmbeddingBagConfig
from torchrec_ext.modules.hashed import shard_layout
from torchrec_ext.ops import (
    coord_uniform_,
    hashed_bag,
    hashed_bag_sgd_,
    hashed_bags,
    hashed_bags_keep,
    hashed_bags_sgd_,
)
from torchrec_ext.ops.hashed import HashedShardLayout

CASES = [
    dict(mode="element", signed=False),
    dict(mode="element", signed=True),
    dict(mode="block", signed=False),
    dict(mode="block", signed=True, chunk_size=4),
    dict(mode="block", block_align=1),  # blocks start anywhere and wrap into the next slot
    dict(mode="block", block_align=4),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("pooling", [0, 1], ids=["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("device", DEVICES)
def test_forward_and_gradients_match_reference(case, pooling, weighted, device):
    cfg = HashedEmbeddingBagConfig(name="t", num_embeddings=997, embedding_dim=16,
                                   compression=0.05, row_regions=4, seed=3, **case)
    w = torch.randn(cfg.buffer_rows, 16, dtype=torch.float64)
    ids, offsets, psw = make_batch(cfg.num_embeddings, 33, 6, seed=pooling + 2 * weighted)
    psw = psw if weighted else None

    assert_kernel_matches_reference(
        lambda ws, i, o, p: hashed_bag(ws[0], i, o, p, pooling, shard_layout(cfg)),
        lambda ws, p: ref.pooled(cfg, ws[0], ids.numpy(), offsets, p, mean=pooling == 1),
        [w], ids, offsets, psw, device, psw_rtol=1e-5)


@pytest.mark.parametrize("case", CASES + [dict(mode="block", chunk_size=16)],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("pooling", [0, 1], ids=["sum", "mean"])
@pytest.mark.parametrize("device", DEVICES)
def test_fused_sgd_equals_reference_gradient_step(case, pooling, device):
    """hashed_bag_sgd_ leaves w - lr * (reference gradient) in the buffer, and the
    per-sample-weight gradient of the weights as they were before the step."""
    cfg = HashedEmbeddingBagConfig(name="t", num_embeddings=997, embedding_dim=16,
                                   compression=0.05, row_regions=4, seed=5, **case)
    w0 = torch.randn(cfg.buffer_rows, 16, dtype=torch.float64)
    ids, offsets, psw = make_batch(cfg.num_embeddings, 40, 7, seed=11 + pooling)
    go = torch.randn(40, 16, dtype=torch.float64)
    w_ref = w0.clone().requires_grad_()
    p_ref = psw.double().clone().requires_grad_()
    (ref.pooled(cfg, w_ref, ids.numpy(), offsets, p_ref, mean=pooling == 1) * go).sum().backward()

    w = w0.clone().to(device)
    gpsw = hashed_bag_sgd_(w, go.to(device), ids.to(device), offsets.to(device),
                           psw.to(device), pooling, shard_layout(cfg), 0.25, True)
    torch.testing.assert_close(w.cpu(), w0 - 0.25 * w_ref.grad)
    torch.testing.assert_close(gpsw.cpu().double(), p_ref.grad, rtol=1e-5, atol=1e-6)
    # Without per-sample weights, nothing else is returned; repeated ids accumulate.
    w2 = w0.clone().to(device)
    dup = torch.tensor([3, 3, 3, 500]).to(device)
    out = hashed_bag_sgd_(w2, go[:2].to(device), dup, torch.tensor([0, 3, 4]).to(device), None, 0,
                          shard_layout(cfg), 1.0, False)
    assert out.numel() == 0
    w_ref2 = w0.clone().requires_grad_()
    (ref.pooled(cfg, w_ref2, dup.cpu().numpy(), torch.tensor([0, 3, 4])) * go[:2]).sum().backward()
    torch.testing.assert_close(w2.cpu(), w0 - w_ref2.grad)


@pytest.mark.parametrize("align", [1, 4, 16])
@pytest.mark.parametrize("device", DEVICES)
def test_block_starts_fall_on_multiples_of_block_align(align, device):
    """Read through the kernel from a buffer whose elements hold their own positions:
    each block is Z consecutive elements (circular in its region's column band) from a
    start that is a multiple of block_align."""
    D, Z = 32, 16
    cfg = HashedEmbeddingBagConfig(name="t", num_embeddings=5000, embedding_dim=D, chunk_size=Z,
                                   block_align=align, compression=0.05, row_regions=2, seed=7)
    assert shard_layout(cfg).align == align
    w = torch.arange(cfg.buffer_rows * D, dtype=torch.float64).view(-1, D)
    ids = torch.arange(0, 5000, 7)
    offsets = torch.arange(ids.numel() + 1)
    pos = hashed_bag(w.to(device), ids.to(device), offsets.to(device), None, 0, shard_layout(cfg)).cpu().long()
    row, col = pos // D, pos % D
    region = (ids // cfg.rows_per_region)[:, None]
    assert bool((col // Z == torch.arange(D) // Z).all())  # block c stays in column band c
    flat = (row - region * cfg.slots) * Z + col % Z  # offset within the region's band
    assert bool(((flat >= 0) & (flat < cfg.slots * Z)).all())
    start = flat[:, ::Z]
    expect = (start.repeat_interleave(Z, dim=1) + torch.arange(D) % Z) % (cfg.slots * Z)
    torch.testing.assert_close(flat, expect)
    assert bool((start % align == 0).all())
    places = cfg.slots * Z // align  # where a block can start
    assert start.unique().numel() > min(start.numel(), places) // 2  # and the starts spread out
    if align == 1:
        assert bool((start % 16 != 0).any())


@pytest.mark.parametrize("device", DEVICES)
def test_one_batched_call_equals_the_reference_table_by_table(device):
    """Tables of different modes, dims, poolings and shard offsets in one call (with an
    empty table among them): outputs, gradients, psw gradients and the fused SGD step
    each equal the reference of that table alone."""
    cfgs = [HashedEmbeddingBagConfig(name="a", num_embeddings=997, embedding_dim=16, compression=0.05,
                                     row_regions=4, seed=1, mode="block", chunk_size=4, signed=True),
            HashedEmbeddingBagConfig(name="b", num_embeddings=300, embedding_dim=8, compression=0.1,
                                     row_regions=2, seed=2, mode="element"),
            HashedEmbeddingBagConfig(name="c", num_embeddings=50, embedding_dim=8, seed=3),
            HashedEmbeddingBagConfig(name="d", num_embeddings=4000, embedding_dim=32, compression=0.02,
                                     row_regions=4, seed=4)]
    bags, poolings = [9, 14, 0, 7], [1, 0, 0, 1]
    # table d is the second row shard of a 2-way row-wise plan: local ids, offset layout
    layouts = [shard_layout(c) for c in cfgs[:3]] + [shard_layout(cfgs[3], row_offset=2 * cfgs[3].slots)]
    local_rows = [c.num_embeddings for c in cfgs[:3]] + [2 * cfgs[3].rows_per_region]
    ws = [torch.randn(c.buffer_rows, c.embedding_dim, dtype=torch.float64) for c in cfgs]
    ws[3] = ws[3][2 * cfgs[3].slots:].contiguous()
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.zeros(0))
    batch = [make_batch(n, B, 5, seed=20 + t) if B else empty for t, (n, B) in enumerate(zip(local_rows, bags))]
    ids = torch.cat([b[0] for b in batch])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long)] +
                        [b[1][1:] + sum(len(x[0]) for x in batch[:t]) for t, b in enumerate(batch)])
    psw = torch.cat([b[2] for b in batch]).float().double()  # the kernels read weights as fp32
    table_bags = [0, 9, 23, 23, 30]
    gos = [torch.randn(B, c.embedding_dim, dtype=torch.float64) for B, c in zip(bags, cfgs)]

    ref_w = [w.clone().requires_grad_() for w in ws]
    ref_p = [b[2].float().double().requires_grad_() for b in batch]
    ref_out = []
    for t, (c, (i, o, _)) in enumerate(zip(cfgs, batch)):
        gid = i.numpy() + (2 * cfgs[3].rows_per_region if t == 3 else 0)
        kw = dict(row_offset=2 * cfgs[3].slots) if t == 3 else {}
        ref_out.append(ref.pooled(c, ref_w[t], gid, o, ref_p[t], mean=poolings[t] == 1, **kw))
    sum((r * g).sum() for r, g in zip(ref_out, gos)).backward()
    for r in ref_w:  # the empty table's buffer gets no gradient from the reference
        r.grad = torch.zeros_like(r) if r.grad is None else r.grad

    dev = lambda x: x.to(device)  # noqa: E731
    w_in = [dev(w).requires_grad_() for w in ws]
    p_in = dev(psw).requires_grad_()
    outs = hashed_bags(w_in, dev(ids), dev(offsets), p_in, table_bags, poolings, layouts)
    for out, r in zip(outs, ref_out):
        torch.testing.assert_close(out.cpu(), r.detach())
    sum((o * dev(g)).sum() for o, g in zip(outs, gos)).backward()
    for w, r in zip(w_in, ref_w):
        torch.testing.assert_close(w.grad.cpu(), r.grad)
    torch.testing.assert_close(p_in.grad.cpu(), torch.cat([p.grad for p in ref_p]))

    stepped = [dev(w.clone()) for w in ws]
    gpsw = hashed_bags_sgd_(stepped, [dev(g) for g in gos], dev(ids), dev(offsets), dev(psw), table_bags,
                            poolings, layouts, 0.5, True)
    for w, w0, r in zip(stepped, ws, ref_w):
        torch.testing.assert_close(w.cpu(), w0 - 0.5 * r.grad)
    torch.testing.assert_close(gpsw.cpu().double(), torch.cat([p.grad for p in ref_p]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [16, 32])
def test_fp32_block_chunks_of_16_columns_match_reference(chunk):
    """fp32 tables with chunks a multiple of 16 take the vector path (masked loads and
    stores of a chunk's two segments); it must agree with the reference, wrap included."""
    cfg = HashedEmbeddingBagConfig(name="t", num_embeddings=5000, embedding_dim=64, mode="block",
                                   chunk_size=chunk, compression=0.01, row_regions=2, seed=9, signed=True)
    w0 = torch.randn(cfg.buffer_rows, 64)
    ids, offsets, _ = make_batch(cfg.num_embeddings, 300, 6, seed=4)
    ref_w = w0.double().requires_grad_()
    expect = ref.pooled(cfg, ref_w, ids.numpy(), offsets)
    torch.testing.assert_close(hashed_bag(w0, ids, offsets, None, 0, shard_layout(cfg)), expect.float(),
                               rtol=1e-5, atol=1e-5)
    go = torch.randn(300, 64)
    (expect * go.double()).sum().backward()
    w = w0.clone()
    hashed_bag_sgd_(w, go, ids, offsets, None, 0, shard_layout(cfg), 0.5, False)
    torch.testing.assert_close(w, (w0.double() - 0.5 * ref_w.grad).float(), rtol=1e-5, atol=1e-5)


def test_ids_beyond_int32_range_use_64_bit_math():
    # 3e9 x 4 virtual elements: every index product overflows 32 bits.
    cfg = HashedEmbeddingBagConfig(name="big", num_embeddings=3_000_000_000, embedding_dim=4,
                                   buffer_size=4096, mode="element", row_regions=4, signed=True)
    w = torch.randn(cfg.buffer_rows, 4, dtype=torch.float64)
    ids = torch.tensor([0, 2_999_999_999, 2**31 + 5, 1_500_000_000, 2_999_999_999])
    offsets = torch.tensor([0, 2, 5])
    out = hashed_bag(w, ids, offsets, None, 0, shard_layout(cfg))
    torch.testing.assert_close(out, ref.pooled(cfg, w, ids.numpy(), offsets))


@pytest.mark.parametrize("mode", ["element", "block"])
def test_row_and_column_shards_compose_to_the_full_table(mode):
    """Region-aligned shards of the buffer compute their part of the table on their own."""
    cfg = HashedEmbeddingBagConfig(name="t", num_embeddings=1000, embedding_dim=16, mode=mode,
                                   chunk_size=4, compression=0.1, row_regions=4)
    w = torch.randn(cfg.buffer_rows, 16, dtype=torch.float64)
    ids, offsets, _ = make_batch(1000, 20, 5, seed=7)
    full = hashed_bag(w, ids, offsets, None, 0, shard_layout(cfg))
    # row-wise over 2 shards: each shard sees only its ids, shifted to local ids
    rows_per_shard, ids_per_shard = 2 * cfg.slots, 2 * cfg.rows_per_region
    total = torch.zeros_like(full)
    for k in range(2):
        keep = (ids // ids_per_shard) == k
        lengths = torch.zeros(20, dtype=torch.long)
        bag_of = torch.repeat_interleave(torch.arange(20), offsets.diff())
        lengths.index_add_(0, bag_of[keep], torch.ones(int(keep.sum()), dtype=torch.long))
        off_k = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        layout = shard_layout(cfg, row_offset=k * rows_per_shard)
        total += hashed_bag(w[k * rows_per_shard:(k + 1) * rows_per_shard].contiguous(),
                            ids[keep] - k * ids_per_shard, off_k, None, 0, layout)
    torch.testing.assert_close(total, full)
    # column-wise: two column shards of 8
    parts = [hashed_bag(w[:, c:c + 8].contiguous(), ids, offsets, None, 0,
                        shard_layout(cfg, col_offset=c)) for c in (0, 8)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full)


def test_coord_uniform_is_plan_independent():
    w = torch.empty(64, 16)
    coord_uniform_(w, 0, 0, 5, -0.1, 0.1)
    assert float(w.min()) >= -0.1 and float(w.max()) < 0.1
    assert abs(float(w.mean())) < 0.01 and w.unique().numel() > 1000
    shard = torch.empty(32, 8)
    coord_uniform_(shard, 32, 8, 5, -0.1, 0.1)
    torch.testing.assert_close(shard, w[32:, 8:])
    other_seed = torch.empty(64, 16)
    coord_uniform_(other_seed, 0, 0, 6, -0.1, 0.1)
    assert not torch.equal(other_seed, w)


def test_coord_uniform_rejects_offsets_that_overflow():
    """(Found by scripts/sanitize.sh: row + row_offset overflowed int64.)"""
    w = torch.zeros(4, 2)
    for rows, cols in [(2**63 - 1, 0), (0, 2**63 - 2), (-1, 0)]:
        with pytest.raises(RuntimeError, match="must be >= 0 and leave the weight's coordinates"):
            coord_uniform_(w, rows, cols, 5, -0.1, 0.1)
    assert torch.equal(w, torch.zeros(4, 2))


def test_kernel_rejects_layouts_whose_sizes_overflow():
    """A layout is plain ints: slots x chunk, or the shard's id space, past int64 must
    raise instead of wrapping into addresses outside the buffer."""
    w = torch.randn(8, 8)
    ids, offsets = torch.tensor([0, 1]), torch.tensor([0, 2])
    # (slots x chunk was computed, overflowing, before the checks that reject it ran)
    huge_slots = HashedShardLayout(mode=1, chunk=8, rows_per_region=4, slots=2**62, align=8)
    with pytest.raises(RuntimeError, match="multiple of slots"):
        hashed_bag(w, ids, offsets, None, 0, huge_slots)
    far = HashedShardLayout(mode=0, chunk=1, rows_per_region=2**62, slots=4, id_offset=2**62)
    with pytest.raises(RuntimeError, match="overflow int64"):
        hashed_bag(w, ids, offsets, None, 0, far)


def test_kernel_rejects_ids_outside_the_shard():
    cfg = HashedEmbeddingBagConfig(name="t", num_embeddings=100, embedding_dim=8, row_regions=2)
    w = torch.randn(cfg.buffer_rows, 8)
    with pytest.raises(RuntimeError, match="ids must lie in"):
        hashed_bag(w, torch.tensor([0, 100]), torch.tensor([0, 2]), None, 0, shard_layout(cfg))
    with pytest.raises(RuntimeError, match="offsets"):
        hashed_bag(w, torch.tensor([0, 1]), torch.tensor([0, 3]), None, 0, shard_layout(cfg))


def test_opcheck_schema_fake_and_autograd_registration():
    cfgs = [HashedEmbeddingBagConfig(name="a", num_embeddings=200, embedding_dim=8, row_regions=2),
            HashedEmbeddingBagConfig(name="b", num_embeddings=50, embedding_dim=4, mode="element", seed=1)]
    ws = [torch.randn(c.buffer_rows, c.embedding_dim, requires_grad=True) for c in cfgs]
    ids, offsets, psw = make_batch(50, 6, 4, seed=1)
    static = ([0, 2, 6], [0, 1], [v for c in cfgs for v in shard_layout(c).args()])
    torch.library.opcheck(torch.ops.torchrec_ext.hashed_bags_forward.default,
                          (ws, ids, offsets, psw.float().requires_grad_(), *static))
    gos = [torch.randn(2, 8), torch.randn(4, 4)]
    torch.library.opcheck(torch.ops.torchrec_ext.hashed_bags_backward.default,
                          (gos, [w.detach() for w in ws], ids, offsets, psw.float(), *static, True))
    torch.library.opcheck(torch.ops.torchrec_ext.hashed_bags_sgd_.default,
                          ([w.detach().clone() for w in ws], gos, ids, offsets, psw.float(), *static, 0.1, True))


@pytest.mark.parametrize("case", [
    # ids past 2^31 and a chunk that is not a power of two (the division, not a shift)
    dict(num_embeddings=3_000_000_000, embedding_dim=24, chunk_size=12, buffer_size=24 * 50, row_regions=4),
    # 7 ids per region and one slot per region: the smallest divisors
    dict(num_embeddings=100, embedding_dim=24, chunk_size=12, block_align=3, row_regions=16, compression=0.01),
    dict(num_embeddings=997, embedding_dim=32, chunk_size=8, block_align=1, compression=0.3, signed=True),
    # element mode (8 columns at a time): huge ids, and one slot per region
    dict(num_embeddings=3_000_000_000, embedding_dim=20, mode="element", buffer_size=20 * 64, row_regions=4,
         signed=True),
    dict(num_embeddings=100, embedding_dim=16, mode="element", row_regions=16, compression=0.01),
], ids=["huge-ids", "tiny-regions", "one-region", "element-huge-ids", "element-tiny-regions"])
@pytest.mark.parametrize("keep", [False, True], ids=["hash", "kept"])
def test_addressing_at_extreme_divisors_matches_reference(case, keep):
    """The addressing (block mode: 8 ids at a time, element mode: 8 columns at a time, where
    the CPU has AVX-512, see cpu/vec_hash.h) at extreme layout sizes: forward pass and SGD
    step equal the reference."""
    cfg = HashedEmbeddingBagConfig(name="t", seed=11, **case)
    w0 = torch.randn(cfg.buffer_rows, cfg.embedding_dim, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    # random ids, then every region's first and last id and their neighbours (an exact
    # multiple of the divisor is where a division's estimate can fall one short)
    starts = torch.arange(0, cfg.num_embeddings, cfg.rows_per_region)[:64]
    edges = torch.cat([starts, starts - 1, starts + 1]).clamp(0, cfg.num_embeddings - 1)
    lengths = torch.randint(0, 9, (200,), generator=g)
    lengths[-1] += edges.numel()
    ids = torch.cat([torch.randint(0, cfg.num_embeddings, (int(lengths.sum()) - edges.numel(),), generator=g),
                     edges])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    ref_w = w0.clone().requires_grad_()
    expect = ref.pooled(cfg, ref_w, ids.numpy(), offsets)
    go = torch.randn_like(expect)
    (expect * go).sum().backward()
    layout = [shard_layout(cfg)]
    if keep:
        (out,), positions = hashed_bags_keep([w0], ids, offsets, None, [0, 200], [0], layout)
    else:
        out, positions = hashed_bags([w0], ids, offsets, None, [0, 200], [0], layout)[0], None
    torch.testing.assert_close(out, expect.detach())
    w = w0.clone()
    hashed_bags_sgd_([w], [go], ids, offsets, None, [0, 200], [0], layout, 0.5, False, positions)
    torch.testing.assert_close(w, w0 - 0.5 * ref_w.grad)


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("dim", [24, 20], ids=["gathers", "scalar"])
def test_fp32_element_mode_matches_reference(threads, dim):
    """fp32 element-mode tables whose dim is a multiple of 8 read and update 8 columns at a
    time (gathers and masked scatters): with the update's columns split across threads at
    places that are not multiples of 8, forward and SGD step equal the reference."""
    cfg = HashedEmbeddingBagConfig(name="t", num_embeddings=3000, embedding_dim=dim, mode="element",
                                   compression=0.02, row_regions=3, seed=13, signed=True)
    w0 = torch.randn(cfg.buffer_rows, dim)
    ids, offsets, psw = make_batch(cfg.num_embeddings, 300, 7, seed=8)
    psw = psw.float()
    ref_w = w0.double().requires_grad_()
    expect = ref.pooled(cfg, ref_w, ids.numpy(), offsets, psw.double(), mean=True)
    go = torch.randn(300, dim)
    (expect * go.double()).sum().backward()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = hashed_bag(w0, ids, offsets, psw, 1, shard_layout(cfg))
        w = w0.clone()
        hashed_bag_sgd_(w, go, ids, offsets, psw, 1, shard_layout(cfg), 0.5, False)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out, expect.detach().float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w, (w0.double() - 0.5 * ref_w.grad).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_fp32_element_mode_reads_and_updates_each_distinct_id_once(threads):
    """The fp32 element kernels gather each distinct id's row once and sum its gradient
    before one read-modify-write of its elements: with ids that repeat heavily (a few ids
    take most positions, within and across bags, over two tables in one call), forward,
    weight gradient and SGD step equal the reference, which handles every position alone."""
    cfgs = [HashedEmbeddingBagConfig(name=n, num_embeddings=5000, embedding_dim=d, mode="element",
                                     compression=0.05, row_regions=r, seed=s, signed=True)
            for n, d, r, s in [("a", 16, 1, 5), ("b", 32, 2, 6)]]
    g = torch.Generator().manual_seed(3)
    bags, poolings = [120, 90], [0, 1]
    batch = []
    for c, B in zip(cfgs, bags):
        lengths = torch.randint(0, 9, (B,), generator=g)
        hot = torch.randint(0, c.num_embeddings, (6,), generator=g)
        n = int(lengths.sum())
        ids = torch.where(torch.rand(n, generator=g) < 0.8, hot[torch.randint(0, 6, (n,), generator=g)],
                          torch.randint(0, c.num_embeddings, (n,), generator=g))
        batch.append((ids, lengths))
    ids = torch.cat([b[0] for b in batch])
    assert ids.unique().numel() < ids.numel() / 3
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cat([b[1] for b in batch]).cumsum(0)])
    psw = (torch.rand(ids.numel(), generator=g) + 0.5).float()
    table_bags = [0, bags[0], sum(bags)]
    layouts = [shard_layout(c) for c in cfgs]
    ws = [torch.randn(c.buffer_rows, c.embedding_dim) for c in cfgs]
    gos = [torch.randn(B, c.embedding_dim) for B, c in zip(bags, cfgs)]

    ref_w = [w.double().requires_grad_() for w in ws]
    ref_out, start = [], 0
    for t, c in enumerate(cfgs):
        n = int(batch[t][1].sum())
        o = torch.cat([torch.zeros(1, dtype=torch.long), batch[t][1].cumsum(0)])
        ref_out.append(ref.pooled(c, ref_w[t], ids[start:start + n].numpy(), o, psw[start:start + n].double(),
                                  mean=poolings[t] == 1))
        start += n
    sum((r * go.double()).sum() for r, go in zip(ref_out, gos)).backward()

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        w_in = [w.clone().requires_grad_() for w in ws]
        outs = hashed_bags(w_in, ids, offsets, psw, table_bags, poolings, layouts)
        sum((o * go).sum() for o, go in zip(outs, gos)).backward()
        stepped = [w.clone() for w in ws]
        hashed_bags_sgd_(stepped, gos, ids, offsets, psw, table_bags, poolings, layouts, 0.5, False)
    finally:
        torch.set_num_threads(before)
    for t in range(2):
        torch.testing.assert_close(outs[t].detach(), ref_out[t].detach().float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w_in[t].grad, ref_w[t].grad.float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stepped[t], (ws[t].double() - 0.5 * ref_w[t].grad).float(), rtol=1e-5,
                                   atol=1e-5)
