"""QR kernels against the plain-PyTorch reference in qr_reference.py."""

import pytest
import qr_reference as ref
import torch
from batches import DEVICES, assert_kernel_matches_reference, make_batch
from torchrec.distributed.types import ShardingType

from torchrec_ext import QREmbeddingBagConfig
from torchrec_ext.modules.table_kind import table_kind
from torchrec_ext.ops import qr_bag, qr_bag_backward, qr_bags, qr_bags_backward

PARTITIONS = [
    dict(partition="qr", num_collisions=37),
    dict(partition="generalized_qr", factors=[7, 5, 31]),
    dict(partition="crt", factors=[31, 33]),
]
OPERATIONS = [
    dict(operation="mult"),
    dict(operation="add"),
    dict(operation="concat", partition_dims=None),  # filled in per partition count
]
N, D = 1000, 12
# The CPU backward pass groups positions by row, or sums into per-thread dense copies of
# small pieces (chosen by size); each test of gradients runs both (CUDA ignores this).
BACKWARD_PATHS = ["grouped", "dense"]


def make_config(part, op, **kw):
    op = dict(op)
    if op["operation"] == "concat":
        k = 2 if part["partition"] == "qr" else len(part["factors"])
        op["partition_dims"] = [2 + 2 * p for p in range(k - 1)] + [D - sum(2 + 2 * p for p in range(k - 1))]
    return QREmbeddingBagConfig(name="t", num_embeddings=kw.pop("n", N), embedding_dim=D, **part, **op, **kw)


def full_layout(cfg):
    view = table_kind(cfg).parameter_shape(cfg)
    pieces = table_kind(cfg).state_pieces(cfg, ShardingType.TABLE_WISE.value, (0, 0), view)
    return pieces, table_kind(cfg).make_shard_state(cfg, pieces, (0, 0), view)


def batch_with_repeats(n, seed):
    ids, offsets, psw = make_batch(n, 29, 7, seed)
    # one multi-hot bag with a repeated id and ids that share partition rows
    extra = torch.tensor([n - 1, 3, 3, n // 2, n // 2 + 1])
    ids = torch.cat([ids, extra])
    offsets = torch.cat([offsets, offsets[-1:] + extra.numel()])
    psw = torch.cat([psw, torch.rand(extra.numel(), dtype=torch.float64) + 0.5])
    return ids, offsets, psw


@pytest.mark.parametrize("part", PARTITIONS, ids=lambda p: p["partition"])
@pytest.mark.parametrize("op", OPERATIONS, ids=lambda o: o["operation"])
@pytest.mark.parametrize("pooling", [0, 1], ids=["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", BACKWARD_PATHS)
def test_forward_and_gradients_match_reference(part, op, pooling, weighted, device, path, monkeypatch):
    monkeypatch.setenv("TORCHREC_EXT_QR_BACKWARD", path)
    cfg = make_config(part, op)
    pieces, layout = full_layout(cfg)
    ws = [torch.randn(pc.sizes, dtype=torch.float64) for pc in pieces]
    ids, offsets, psw = batch_with_repeats(N, seed=pooling + 2 * weighted)
    psw = psw if weighted else None

    assert_kernel_matches_reference(
        lambda w, i, o, p: qr_bag(w, i, o, p, pooling, layout),
        lambda w, p: ref.pooled(cfg, w, ids, offsets, p, mean=pooling == 1),
        ws, ids, offsets, psw, device, psw_rtol=1e-4, psw_atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_returns_only_touched_rows(device):
    cfg = make_config(PARTITIONS[0], OPERATIONS[0])
    pieces, layout = full_layout(cfg)
    ws = [torch.randn(pc.sizes, device=device) for pc in pieces]
    ids = torch.tensor([5, 5, 80, 999], device=device)
    offsets = torch.tensor([0, 3, 4], device=device)
    rows, grads, _ = qr_bag_backward(torch.ones(2, D, device=device), ws, ids, offsets, None, 0, layout, False)
    m = cfg.num_collisions
    assert rows[0].tolist() == sorted({5 // m, 80 // m, 999 // m})
    assert rows[1].tolist() == sorted({5 % m, 80 % m, 999 % m})
    assert [g.shape[0] for g in grads] == [r.numel() for r in rows]


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda o: o["operation"])
def test_row_and_column_shards_compute_their_part_of_the_table(op):
    """A row-wise shard (block of quotient rows + replicated remainder) pools exactly the
    full table's bags of its ids; a column-wise shard pools its columns of every bag."""
    cfg = make_config(dict(partition="generalized_qr", factors=[7, 5, 31]), op)
    pieces, layout = full_layout(cfg)
    ws = [torch.randn(pc.sizes, dtype=torch.float64) for pc in pieces]
    rows_s, _ = table_kind(cfg).parameter_shape(cfg)
    # row-wise: block 2 of 4 of the view's rows; ids are shard-local
    block = -(-rows_s // 4)
    lo_row = 2 * block
    id_block = table_kind(cfg).rw_id_space(cfg, block, 4) // 4
    ids = torch.arange(lo_row * 35, min(N, (lo_row + block) * 35))
    offsets = torch.arange(0, ids.numel() + 1, 3).clamp(max=ids.numel())
    offsets[-1] = ids.numel()
    expect = ref.pooled(cfg, ws, ids, offsets, None, mean=False)
    rw = table_kind(cfg).state_pieces(cfg, ShardingType.ROW_WISE.value, (lo_row, 0), (block, D))
    assert [pc.replicated for pc in rw] == [True, True, False]
    rw_ws = [w[pc.offsets[0]:pc.offsets[0] + pc.sizes[0]] for w, pc in zip(ws, rw)]
    got = qr_bag(rw_ws, ids - 2 * id_block, offsets, None, 0, table_kind(cfg).make_shard_state(cfg, rw, (lo_row, 0), (block, D)))
    torch.testing.assert_close(got, expect)
    # column-wise: output columns [5, 12)
    cw = table_kind(cfg).state_pieces(cfg, ShardingType.COLUMN_WISE.value, (0, 5), (rows_s, D - 5))
    by_name = {pc.name: w for pc, w in zip(pieces, ws)}
    cw_ws = [by_name[pc.name][:, pc.offsets[1]:pc.offsets[1] + pc.sizes[1]] for pc in cw]
    got = qr_bag(cw_ws, ids, offsets, None, 0, table_kind(cfg).make_shard_state(cfg, cw, (0, 5), (rows_s, D - 5)))
    torch.testing.assert_close(got, expect[:, 5:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", BACKWARD_PATHS)
def test_one_batched_call_equals_the_reference_table_by_table(device, path, monkeypatch):
    monkeypatch.setenv("TORCHREC_EXT_QR_BACKWARD", path)
    """Five shards in one call (mult, add over 3 partitions, concat, an empty table, a
    row-wise shard with an id offset; SUM and MEAN; weighted): outputs, weight gradients
    (touched rows), and psw gradients equal each table's reference alone."""
    gqr = dict(partition="generalized_qr", factors=[7, 5, 31])
    cfgs = [make_config(PARTITIONS[0], OPERATIONS[0]), make_config(gqr, OPERATIONS[1]),
            make_config(PARTITIONS[2], OPERATIONS[2]), make_config(PARTITIONS[0], OPERATIONS[1]),
            make_config(gqr, OPERATIONS[0])]
    poolings, bags = [0, 1, 1, 0, 0], [9, 7, 8, 0, 6]
    shards = [full_layout(c) for c in cfgs[:4]]
    # the last table: row-wise block 1 of 2 (quotient rows [r0, r0 + block)), shard-local ids
    rows_s = table_kind(cfgs[4]).parameter_shape(cfgs[4])[0]
    block = -(-rows_s // 2)
    rw = table_kind(cfgs[4]).state_pieces(cfgs[4], ShardingType.ROW_WISE.value, (block, 0), (rows_s - block, D))
    shards.append((rw, table_kind(cfgs[4]).make_shard_state(cfgs[4], rw, (block, 0), (rows_s - block, D))))
    full_ws = [[torch.randn(pc.sizes, dtype=torch.float64) for pc in full_layout(c)[0]] for c in cfgs]
    ws = [[w[pc.offsets[0]:pc.offsets[0] + pc.sizes[0]] for w, pc in zip(fw, pieces)]
          for fw, (pieces, _) in zip(full_ws, shards)]
    id_lo = [0, 0, 0, 0, block * 35]
    batch = []
    for t, (c, B) in enumerate(zip(cfgs, bags)):
        ids, offsets, psw = make_batch(N - id_lo[t], B, 5, seed=30 + t) if B else (
            torch.zeros(0, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.zeros(0, dtype=torch.float64))
        batch.append((ids + id_lo[t], offsets, psw.float().double()))  # the kernels read psw as fp32
    local_ids = torch.cat([b[0] - lo for b, lo in zip(batch, id_lo)])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long)] +
                        [b[1][1:] + sum(len(x[0]) for x in batch[:t]) for t, b in enumerate(batch)])
    table_bags = [0] + torch.tensor(bags).cumsum(0).tolist()
    dtype = torch.float32 if device == "cuda" else torch.float64
    flat = [w.to(device, dtype).contiguous() for tw in ws for w in tw]
    psw = torch.cat([b[2] for b in batch])
    layouts = [lay for _, lay in shards]
    outs = qr_bags(flat, local_ids.to(device), offsets.to(device), psw.to(device, dtype), table_bags, poolings,
                   layouts)
    gos = [torch.randn(B, D, dtype=torch.float64) for B in bags]
    rows, grads, gpsw = qr_bags_backward([g.to(device, dtype) for g in gos], flat, local_ids.to(device),
                                         offsets.to(device), psw.to(device, dtype), table_bags, poolings,
                                         layouts, True)
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    piece, pos = 0, 0
    for t, (c, (ids, off, p)) in enumerate(zip(cfgs, batch)):
        ref_w = [w.clone().requires_grad_() for w in full_ws[t]]
        ref_p = p.clone().requires_grad_()
        expect = ref.pooled(c, ref_w, ids, off, ref_p, mean=poolings[t] == 1)
        torch.testing.assert_close(outs[t].cpu().double(), expect, rtol=tol, atol=tol)
        (expect * gos[t]).sum().backward()
        for pc, rw_ in zip(shards[t][0], ref_w):
            dense = torch.zeros(pc.sizes, dtype=torch.float64)
            dense.index_copy_(0, rows[piece].cpu(), grads[piece].cpu().double())
            torch.testing.assert_close(dense, rw_.grad[pc.offsets[0]:pc.offsets[0] + pc.sizes[0]], rtol=tol, atol=tol)
            piece += 1
        torch.testing.assert_close(gpsw[pos:pos + len(ids)].cpu().double(), ref_p.grad, rtol=1e-4, atol=1e-4)
        pos += len(ids)
    assert piece == len(flat) and pos == len(local_ids)


def test_opcheck_schema_fake_and_autograd_registration():
    cfgs = [make_config(PARTITIONS[1], OPERATIONS[0]), make_config(PARTITIONS[0], OPERATIONS[2])]
    layouts = [full_layout(c) for c in cfgs]
    ws = [torch.randn(pc.sizes, requires_grad=True) for pieces, _ in layouts for pc in pieces]
    ids, offsets, psw = make_batch(N, 6, 4, seed=1)
    static = ([0, 2, 6], [0, 1], [v for _, lay in layouts for v in lay.args()])
    torch.library.opcheck(torch.ops.torchrec_ext.qr_bags_forward.default,
                          (ws, ids, offsets, psw.float().requires_grad_(), *static))
    gos = [torch.randn(2, D), torch.randn(4, D)]
    torch.library.opcheck(torch.ops.torchrec_ext.qr_bags_backward.default,
                          (gos, [w.detach() for w in ws], ids, offsets, psw.float(), *static, True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_kernel_rejects_ids_outside_the_shard():
    cfg = make_config(PARTITIONS[0], OPERATIONS[0])
    pieces, layout = full_layout(cfg)
    ws = [torch.randn(pc.sizes) for pc in pieces]
    # INT64_MIN: the check once used it as its "no bad id" sentinel, so it passed and the
    # kernel read row -1 of every partition
    for bad in (-1, -(2**63), table_kind(cfg).parameter_shape(cfg)[0] * cfg.num_collisions):
        with pytest.raises(RuntimeError, match="outside this shard"):
            qr_bag(ws, torch.tensor([0, bad]), torch.tensor([0, 2]), None, 0, layout)


@pytest.mark.parametrize("path", BACKWARD_PATHS)
def test_gradients_when_the_table_dwarfs_the_batch(path, monkeypatch):
    """A quotient table much larger than the batch: the grouped path sorts its rows."""
    monkeypatch.setenv("TORCHREC_EXT_QR_BACKWARD", path)
    cfg = QREmbeddingBagConfig(name="t", num_embeddings=200_000, embedding_dim=4, num_collisions=2)
    pieces, layout = full_layout(cfg)
    ws = [torch.randn(pc.sizes, dtype=torch.float64) for pc in pieces]
    ids, offsets = torch.tensor([199_999, 7, 6, 7, 150_001]), torch.tensor([0, 2, 5])
    w1 = [w.clone().requires_grad_() for w in ws]
    w2 = [w.clone().requires_grad_() for w in ws]
    qr_bag(w1, ids, offsets, None, 0, layout).sum().backward()
    ref.pooled(cfg, w2, ids, offsets, None, mean=False).sum().backward()
    for a, b in zip(w1, w2):
        torch.testing.assert_close(a.grad, b.grad)
