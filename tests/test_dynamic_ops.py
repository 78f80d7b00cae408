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
    return torch.stack(out) if out else table.new_zeros((0, table.shape[1]))


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
    (urows,), (grads,), (counts,), _ = dyn.dynamic_bags_backward([go], [blocks], rows, offsets, None, [0, 2], [0],
                                                                 [0.0], False)
    assert urows.tolist() == [2, 9] and counts.tolist() == [2, 3]
    torch.testing.assert_close(grads.cpu(), torch.tensor([[11.0, 22, 33], [12, 24, 36]]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_accumulates_in_float(device, dtype):
    table = torch.randn(16, 8)
    blocks = [table[:8].to(device, dtype), table[8:].to(device, dtype)]
    rows = torch.tensor([0, 15, 3, 3], device=device)
    out = dyn.dynamic_bag(blocks, rows, torch.tensor([0, 2, 4], device=device), None, 0, 0.0)
    assert out.dtype == torch.float32
    expect = reference_bags(table.to(dtype).float(), rows.cpu(), torch.tensor([0, 2, 4]), None, False, 0.0)
    torch.testing.assert_close(out.cpu(), expect, rtol=1e-6, atol=1e-6)


# (block size, blocks, dim, pooling, missing value, bags) of each table of one batched call:
# other dims and block sizes, SUM and MEAN, a table with no bags, one whose bags are empty.
BATCH_TABLES = [(4, 3, 6, 0, 0.0, 5), (8, 2, 3, 1, 0.5, 4), (2, 1, 5, 0, 0.0, 0), (4, 2, 4, 1, -1.0, 3),
                (3, 4, 8, 0, 0.25, 2)]


def batched_case(seed):
    """Tables, rows (-1 included), offsets (empty bags included) and psw of a batched call."""
    g = torch.Generator().manual_seed(seed)
    tables = [torch.randn(bs * nb, dim, generator=g, dtype=torch.float64) for bs, nb, dim, *_ in BATCH_TABLES]
    rows, lengths = [], []
    for t, (bs, nb, _, _, _, bags) in enumerate(BATCH_TABLES):
        lens = torch.randint(0, 5, (bags,), generator=g) if t != 3 else torch.zeros(bags, dtype=torch.long)
        rows.append(torch.randint(-1, bs * nb, (int(lens.sum()),), generator=g))
        lengths.append(lens)
    lengths = torch.cat(lengths)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    table_bags = [0]
    for *_, bags in BATCH_TABLES:
        table_bags.append(table_bags[-1] + bags)
    rows = torch.cat(rows)
    return tables, rows, offsets, torch.rand(rows.numel(), generator=g, dtype=torch.float64), table_bags


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weighted", [False, True])
def test_batched_call_equals_each_table_alone(device, weighted):
    """One call over five tables equals plain PyTorch table by table: outputs, each table's
    touched rows, their summed gradients and counts, and the per-sample-weight gradient."""
    tables, rows, offsets, psw, table_bags = batched_case(7)
    blocks = [[t[i * bs:(i + 1) * bs].float().to(device) for i in range(nb)]
              for t, (bs, nb, *_) in zip(tables, BATCH_TABLES)]
    poolings = [c[3] for c in BATCH_TABLES]
    missing = [c[4] for c in BATCH_TABLES]
    dev = lambda x: x.to(device)  # noqa: E731
    p = dev(psw.float()) if weighted else None
    outs = dyn.dynamic_bags(blocks, dev(rows), dev(offsets), p, table_bags, poolings, missing)
    gos = [torch.randn(o.shape, dtype=torch.float64) for o in outs]
    urows, grads, counts, gpsw = dyn.dynamic_bags_backward([dev(g.float()) for g in gos], blocks, dev(rows),
                                                           dev(offsets), p, table_bags, poolings, missing, weighted)
    p_ref = psw.clone().requires_grad_() if weighted else None
    for t, (table, (bs, nb, dim, pooling, miss, bags)) in enumerate(zip(tables, BATCH_TABLES)):
        lo, hi = int(offsets[table_bags[t]]), int(offsets[table_bags[t + 1]])
        off_t = offsets[table_bags[t]:table_bags[t + 1] + 1] - lo
        ref_table = table.clone().requires_grad_()
        expect = reference_bags(ref_table, rows[lo:hi], off_t, p_ref[lo:hi] if weighted else None, pooling == 1, miss)
        assert outs[t].shape == (bags, dim)
        torch.testing.assert_close(outs[t].cpu().double(), expect, rtol=1e-5, atol=1e-5)
        if bags:
            (expect * gos[t]).sum().backward()
        touched = rows[lo:hi][rows[lo:hi] >= 0]
        assert urows[t].tolist() == sorted(set(touched.tolist())), t
        assert counts[t].tolist() == [int((touched == r).sum()) for r in urows[t].tolist()], t
        dense = ref_table.grad if ref_table.grad is not None else torch.zeros_like(table)
        torch.testing.assert_close(grads[t].cpu().double(), dense[urows[t].cpu()], rtol=1e-5, atol=1e-5)
    if weighted:
        torch.testing.assert_close(gpsw.cpu().double(), p_ref.grad, rtol=1e-4, atol=1e-5)
    else:
        assert gpsw.numel() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_sgd_in_backward_equals_backward_then_update(device):
    """dynamic_bags_sgd_ over five tables equals dynamic_bags_backward followed by a plain
    PyTorch SGD step per table: rows past real_rows (scratch) untouched, per-id means where
    asked, `updated` stamped for exactly the rows that moved, psw gradient from before."""
    tables, rows, offsets, psw, table_bags = batched_case(11)
    poolings = [c[3] for c in BATCH_TABLES]
    missing = [c[4] for c in BATCH_TABLES]
    real = [max(bs * nb - 3, 0) for bs, nb, *_ in BATCH_TABLES]  # the last 3 rows of each table: scratch
    by_id = [True, False, True, False, True]
    lr = 0.3
    dev = lambda x: x.to(device)  # noqa: E731
    blocks = [[dev(t[i * bs:(i + 1) * bs].float()) for i in range(nb)] for t, (bs, nb, *_) in zip(tables, BATCH_TABLES)]
    gos = [dev(torch.randn(n, c[2])) for n, c in zip([b - a for a, b in zip(table_bags, table_bags[1:])], BATCH_TABLES)]
    urows, grads, counts, gpsw_ref = dyn.dynamic_bags_backward(gos, blocks, dev(rows), dev(offsets), dev(psw.float()),
                                                               table_bags, poolings, missing, True)
    expect = [torch.cat(b).cpu().clone() for b in blocks]
    for t in range(len(BATCH_TABLES)):
        keep = urows[t].cpu() < real[t]
        g = grads[t].cpu()[keep] / (counts[t].cpu()[keep].unsqueeze(1).float() if by_id[t] else 1.0)
        expect[t][urows[t].cpu()[keep]] -= lr * g
    updated = [dev(torch.full((bs * nb,), -1, dtype=torch.long)) for bs, nb, *_ in BATCH_TABLES]
    gpsw = dyn.dynamic_bags_sgd_(blocks, gos, dev(rows), dev(offsets), dev(psw.float()), table_bags, poolings, missing,
                                 real, by_id, lr, updated, [5, 6, 7, 8, 9], True)
    torch.testing.assert_close(gpsw, gpsw_ref)
    for t in range(len(BATCH_TABLES)):
        torch.testing.assert_close(torch.cat(blocks[t]).cpu(), expect[t], rtol=1e-6, atol=1e-6)
        moved = set(urows[t].cpu()[urows[t].cpu() < real[t]].tolist())
        assert updated[t].cpu().tolist() == [5 + t if r in moved else -1 for r in range(updated[t].numel())], t


@pytest.mark.parametrize("device", DEVICES)
def test_lookup_finds_every_table_and_stamps_what_it_found(device):
    """hash_index_lookup_ over three tables equals a dict per table; in stamping mode each
    found row gets the table's step and one count per occurrence, nothing else changes."""
    from torchrec_ext.modules.hash_table import HashTable

    g = torch.Generator().manual_seed(2)
    tables, dicts = [], []
    for t in range(3):
        ht = HashTable(f"t{t}", device=device)
        keys = torch.randint(-(2**62), 2**62, (50 + 20 * t,), generator=g)
        rows, _ = ht.find_or_insert(keys.to(device))
        tables.append(ht)
        dicts.append(dict(zip(keys.tolist(), rows.cpu().tolist())))
    queries = []
    for t, d in enumerate(dicts):  # known keys (repeated) and unknown ones
        known = torch.tensor(list(d))[torch.randint(0, len(d), (40,), generator=g)]
        queries.append(torch.cat([known, torch.randint(-(2**62), 2**62, (5,), generator=g)]))
    queries[1] = queries[1][:0]  # a table with no keys in this call
    keys = torch.cat(queries).to(device)
    ends = [0]
    for q in queries:
        ends.append(ends[-1] + q.numel())
    seen = [torch.full((200,), -7, dtype=torch.long, device=device) for _ in tables]
    counts = [torch.zeros(200, dtype=torch.long, device=device) for _ in tables]
    index = [(ht._keys, ht._rows) for ht in tables]
    found = ops.hash_index_lookup_([i[0] for i in index], [i[1] for i in index], keys, ends, seen, counts,
                                   [10, 11, 12])
    assert found.cpu().tolist() == [d.get(k, -1) for q, d in zip(queries, dicts) for k in q.tolist()]
    for t, (q, d) in enumerate(zip(queries, dicts)):
        hits = [d[k] for k in q.tolist() if k in d]
        expect_count = torch.bincount(torch.tensor(hits, dtype=torch.long), minlength=200)
        assert counts[t].cpu().tolist() == expect_count.tolist(), t
        assert seen[t].cpu().tolist() == [10 + t if c else -7 for c in expect_count.tolist()], t
    # read-only: the same rows, no stamps
    again = ops.hash_index_lookup_([i[0] for i in index], [i[1] for i in index], keys, ends, [], [], [])
    assert torch.equal(again, found)
    with pytest.raises(RuntimeError, match="key_ends must run from 0 to the number of keys"):
        ops.hash_index_lookup_([i[0] for i in index], [i[1] for i in index], keys, [0, 1, 2, 3], [], [], [])


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
    for bad in (4, -2):
        rows, offsets = torch.tensor([0, bad], device=device), torch.tensor([0, 2], device=device)
        with pytest.raises(RuntimeError, match=r"rows must lie in \[-1, rows of their table\)"):
            dyn.dynamic_bags([blocks], rows, offsets, None, [0, 1], [0], [0.0])
        with pytest.raises(RuntimeError, match=r"rows must lie in \[-1, rows of their table\)"):
            dyn.dynamic_bags_backward([torch.zeros(1, 3, device=device)], [blocks], rows, offsets, None, [0, 1],
                                      [0], [0.0], False)
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
    offsets = torch.tensor([0, 1, 4])
    psw = torch.rand(4)
    # two tables (blocks [0, 2) and [2, 3)) over bags [0, 1) and [1, 2) of offsets
    batched = (blocks + [torch.randn(2, 5)], [0, 2, 3], torch.tensor([7, 1, -1, 0]), offsets, psw, [0, 1, 2],
               [0, 1], [0.5, 0.0])
    torch.library.opcheck(ops.dynamic_bags_forward, batched)
    go = [torch.randn(1, 3), torch.randn(1, 5)]
    torch.library.opcheck(ops.dynamic_bags_backward, (go, *batched, True))
    stamps = [torch.zeros(8, dtype=torch.long), torch.zeros(2, dtype=torch.long)]
    torch.library.opcheck(ops.dynamic_bags_sgd_, (batched[0], batched[1], go, *batched[2:], [8, 1], [1, 0], 0.1,
                                                  stamps, [3, 4], True))
    torch.library.opcheck(ops.block_rows_gather, (blocks, torch.tensor([0, 7])))
    torch.library.opcheck(ops.dynamic_key_hash, (torch.tensor([3, -4]),))
    slots_k, slots_r = torch.zeros(16, dtype=torch.long), torch.full((16,), -1)
    torch.library.opcheck(ops.hash_index_find, (slots_k, slots_r, torch.tensor([1, 2])))
    meta = [torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long)]
    torch.library.opcheck(ops.hash_index_lookup_, ([slots_k, slots_k], [slots_r, slots_r], torch.tensor([1, 2, 3]),
                                                   [0, 1, 3], meta[:1] * 2, meta[1:] * 2, [4, 5]))
    torch.library.opcheck(ops.hash_index_rehash, (slots_k, slots_r, 32))



def test_init_rejects_a_column_offset_outside_any_table():
    """(Found by scripts/sanitize.sh: col * 128 + draw overflowed int64 in the initializer.)"""
    blocks = [torch.zeros(2, 3)]
    kind, a, b = Normal().native()
    for col in (2**62, -1):
        with pytest.raises(RuntimeError, match=r"col_offset \(.*\) must lie in \[0, 2\^40\)"):
            ops.block_rows_init_(blocks, torch.tensor([0, 1]), torch.tensor([5, 6]), kind, a, b, 0, col)
    assert torch.equal(blocks[0], torch.zeros(2, 3))


def test_insert_with_a_pool_counter_outside_the_pool_reads_no_pool_entry():
    """pool_used is the caller's counter: a negative one must not index pool[-1]."""
    slots_k, slots_r = torch.zeros(16, dtype=torch.long), torch.full((16,), -1)
    pool, used = torch.tensor([3, 4]), torch.tensor([-5])
    with pytest.raises(RuntimeError, match="index or row pool exhausted"):
        ops.hash_index_insert_(slots_k, slots_r, torch.tensor([11]), pool, used)
    assert not bool((slots_r >= 0).any())  # no key got a row
