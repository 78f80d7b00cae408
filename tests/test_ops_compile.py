"""The native ops trace through torch.compile (fake kernels + autograd registration):
compiled forward and backward equal eager ones."""

import pytest
import torch
from batches import make_batch
from torchrec.distributed.types import ShardingType

from torchrec_ext import HashedEmbeddingBagConfig, QREmbeddingBagConfig
from torchrec_ext.modules.hashed import shard_layout
from torchrec_ext.modules.table_kind import table_kind
from torchrec_ext.ops import dynamic_bag, hashed_bag, qr_bag


def _qr():
    cfg = QREmbeddingBagConfig(name="q", num_embeddings=500, embedding_dim=8, num_collisions=20)
    view = table_kind(cfg).parameter_shape(cfg)
    pieces = table_kind(cfg).state_pieces(cfg, ShardingType.TABLE_WISE.value, (0, 0), view)
    layout = table_kind(cfg).make_shard_state(cfg, pieces, (0, 0), view)
    return [torch.randn(pc.sizes) for pc in pieces], lambda ws, i, o, p: qr_bag(ws, i, o, p, 0, layout)


def _hashed():
    cfg = HashedEmbeddingBagConfig(name="h", num_embeddings=500, embedding_dim=8, row_regions=2)
    layout = shard_layout(cfg)
    return [torch.randn(cfg.buffer_rows, 8)], lambda ws, i, o, p: hashed_bag(ws[0], i, o, p, 0, layout)


def _dynamic():
    # rows -1..11 over three blocks of four rows (-1: a key the table does not hold)
    return [torch.randn(4, 8) for _ in range(3)], lambda ws, i, o, p: dynamic_bag(ws, i % 13 - 1, o, p, 0, 0.5)


@pytest.mark.parametrize("make", [_qr, _hashed, _dynamic], ids=["qr", "hashed", "dynamic"])
def test_compiled_matches_eager(make):
    weights, fn = make()
    ids, offsets, psw = make_batch(500, 9, 4, seed=5)
    psw = psw.float()

    def run(f):
        ws = [w.clone().requires_grad_() for w in weights]
        p = psw.clone().requires_grad_()
        out = f(ws, ids, offsets, p)
        (out * torch.arange(out.numel()).view_as(out).float()).sum().backward()
        return out.detach(), [w.grad for w in ws], p.grad

    eager = run(fn)
    compiled = run(torch.compile(fn, backend="aot_eager", fullgraph=True))
    torch.testing.assert_close(compiled[0], eager[0])
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(compiled[2], eager[2])
