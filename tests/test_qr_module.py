"""QR tables: the reference formula per feature, complementarity (a distinct vector per
id, also above 2^24), initialisation variance, and config validation (the EBC contract
is in test_collection_contract.py)."""

import math

import pytest
import qr_reference as ref
import torch
from sample_tables import kjt, qr_tables
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext import QREmbeddingBagCollection, QREmbeddingBagConfig


def test_each_feature_equals_the_reference_formula():
    m = QREmbeddingBagCollection(qr_tables())
    out = m(kjt()).to_dict()
    t0, t1 = m.embedding_bag_configs()
    w0 = [w.detach() for w in m.table_weights("t0")]
    w1 = [w.detach() for w in m.table_weights("t1")]
    torch.testing.assert_close(out["a"], ref.pooled(t0, w0, torch.tensor([1, 2]), torch.tensor([0, 2, 2]), None, False))
    torch.testing.assert_close(out["shared@t1"], ref.pooled(t1, w1, torch.tensor([5, 6, 7, 8]), torch.tensor([0, 2, 4]),
                                                            None, True))
    torch.testing.assert_close(out["b"], ref.pooled(t1, w1, torch.tensor([3, 4]), torch.tensor([0, 1, 2]), None, True))


def test_multi_hot_bags_compose_per_id_before_pooling():
    """sum_i q_i * r_i, not (sum q_i) * (sum r_i) as DLRM's QREmbeddingBag computes."""
    cfg = QREmbeddingBagConfig(name="q", num_embeddings=100, embedding_dim=4, feature_names=["f"], num_collisions=10)
    m = QREmbeddingBagCollection([cfg])
    q, r = [w.detach() for w in m.table_weights("q")]
    out = m(KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([12, 47]), torch.tensor([2]))).values()[0]
    per_id = q[1] * r[2] + q[4] * r[7]
    after_pooling = (q[1] + q[4]) * (r[2] + r[7])
    torch.testing.assert_close(out, per_id)
    assert not torch.allclose(out, after_pooling)


N_BIG = (1 << 24) + 1001  # above float32's exact integers


@pytest.mark.parametrize("kw", [
    dict(partition="qr", num_collisions=4099),
    dict(partition="generalized_qr", factors=[257, 263, 251]),
    dict(partition="crt", factors=[4099, 4111]),
], ids=lambda k: k["partition"])
def test_every_id_gets_a_distinct_vector(kw):
    cfg = QREmbeddingBagConfig(name="big", num_embeddings=N_BIG, embedding_dim=4, **kw)
    ids = torch.arange(N_BIG)
    key = torch.zeros(N_BIG, dtype=torch.long)
    for part in cfg.partitions():
        rows = part.rows_of(ids)
        assert int(rows.min()) >= 0 and int(rows.max()) < part.rows
        key = key * part.rows + rows
    assert torch.unique(key).numel() == N_BIG  # the row tuples are all distinct

    # The kernel near and above 2^24 agrees with the Python-integer reference, and gives
    # distinct vectors to ids that float32 division would merge.
    m = QREmbeddingBagCollection([cfg])
    probe = torch.tensor([(1 << 24) - 2, (1 << 24) - 1, 1 << 24, (1 << 24) + 1, (1 << 24) + 2, N_BIG - 1])
    out = m(KeyedJaggedTensor.from_lengths_sync(["big"], probe, torch.ones(probe.numel(), dtype=torch.long))).values()
    ws = [w.detach() for w in m.table_weights("big")]
    torch.testing.assert_close(out, ref.composed(cfg, ws, probe.tolist()))
    assert torch.cdist(out, out).add(torch.eye(probe.numel())).min() > 0
    assert torch.unique(probe.float()).numel() < probe.numel()  # float32 math would merge some


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_init_matches_torchrec_default_variance(operation):
    n = 200_000
    cfg = QREmbeddingBagConfig(name="v", num_embeddings=n, embedding_dim=64, operation=operation)
    m = QREmbeddingBagCollection([cfg])
    ids = torch.randint(0, n, (4096,), generator=torch.Generator().manual_seed(0))
    vecs = ref.composed(cfg, [w.detach() for w in m.table_weights("v")], ids.tolist())
    target = (1.0 / n) / 3.0  # variance of TorchRec's U(-sqrt(1/n), sqrt(1/n))
    assert abs(vecs.var().item() / target - 1.0) < 0.15
    assert abs(vecs.mean().item()) < 0.1 * math.sqrt(target)


@pytest.mark.parametrize("kwargs,match", [
    (dict(partition="generalized_qr", factors=[10, 9]), r"QR table 'x': the product of factors \[10, 9\] is 90 < num_embeddings 100"),
    (dict(partition="crt", factors=[9, 11]), r"QR table 'x': the product of factors \[9, 11\] is 99 < num_embeddings 100"),
    (dict(partition="crt", factors=[12, 18]), r"QR table 'x': crt moduli must be pairwise coprime; 12 and 18 share the factor 6"),
    (dict(operation="concat", partition_dims=[3, 4]), r"QR table 'x': partition_dims \[3, 4\] must be 2 positive dims adding up to embedding_dim 8"),
    (dict(operation="concat", partition_dims=[2, 2, 4]), r"QR table 'x': partition_dims \[2, 2, 4\] must be 2 positive"),
    (dict(operation="mult", partition_dims=[4, 4]), r"QR table 'x': partition_dims \[4, 4\] apply to 'concat' only"),
    (dict(partition="modulo"), r"QR table 'x': partition must be one of"),
    (dict(operation="max"), r"QR table 'x': operation must be one of"),
    (dict(partition="generalized_qr", factors=[]), r"QR table 'x': generalized_qr needs factors >= 1"),
    (dict(num_collisions=-3), r"QR table 'x': num_collisions must be >= 1, got -3"),
])
def test_bad_configs_raise_errors_naming_the_table(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QREmbeddingBagConfig(name="x", num_embeddings=100, embedding_dim=8, **kwargs)


def test_partition_table_sizes():
    cfg = QREmbeddingBagConfig(name="x", num_embeddings=1_000_000, embedding_dim=16, num_collisions=1000)
    assert [(p.rows, p.dim) for p in cfg.partitions()] == [(1000, 16), (1000, 16)]
    assert cfg.table_bytes() == 2 * 1000 * 16 * 4
    gen = QREmbeddingBagConfig(name="g", num_embeddings=1000, embedding_dim=6, partition="generalized_qr",
                               factors=[10, 10, 20], operation="concat", partition_dims=[1, 2, 3])
    assert [(p.rows, p.dim, p.out_col) for p in gen.partitions()] == [(10, 1, 0), (10, 2, 1), (10, 3, 3)]
