"""DynamicEmbeddingBagCollection: a drop-in EBC whose rows appear on first sight.

References: nn.EmbeddingBag over the same rows (forward, gradients, an SGD step), the
initializer's values for unseen ids, and the table's own state before a refused batch."""

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_configs import DataType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext import DynamicEmbeddingBagCollection, DynamicEmbeddingBagConfig, TableFullError
from torchrec_ext.initializers import Constant, Normal
from torchrec_ext.modules.dynamic_embedding_bag import release_shared
from torchrec_ext.modules.dynamic_rows import KeyedRows

LR = 0.3
BIG = 10**15


def tables(**kw):
    return [
        DynamicEmbeddingBagConfig(name="users", num_embeddings=1000, embedding_dim=8, feature_names=["u", "shared"],
                                  block_size=16, **kw),
        DynamicEmbeddingBagConfig(name="products", num_embeddings=1000, embedding_dim=4, feature_names=["i", "shared"],
                                  pooling=PoolingType.MEAN, block_size=16, **kw),
    ]


def batch(seed, n_ids=400, batch_size=6, keys=("u", "i", "shared")):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 5, (len(keys) * batch_size,), generator=g)
    lengths[0] = 0
    pool = torch.randint(-BIG, BIG, (n_ids,), generator=g)
    ids = pool[torch.randint(0, n_ids, (int(lengths.sum()),), generator=g)]  # repeats
    w = torch.rand(ids.numel(), generator=g) + 0.5
    return KeyedJaggedTensor.from_lengths_sync(keys=list(keys), values=ids, lengths=lengths, weights=w)


def as_embedding_bags(coll, cfgs):
    """nn.EmbeddingBag per table holding the collection's rows, and key -> index maps."""
    sd = coll.state_dict()
    out = {}
    for t in cfgs:
        entries = [v for k, v in sd.items() if k.startswith(f"embedding_bags.{t.name}.") and isinstance(v, KeyedRows)]
        keys = torch.cat([e.keys for e in entries])
        values = torch.cat([e.values for e in entries])
        bag = nn.EmbeddingBag(keys.numel(), t.embedding_dim, mode="sum" if t.pooling == PoolingType.SUM else "mean")
        bag.weight.data.copy_(values)
        out[t.name] = (bag, {k: i for i, k in enumerate(keys.tolist())})
    return out


def reference_forward(bags, cfgs, kjt, weighted):
    cols = []
    d = kjt.to_dict()
    for t in cfgs:
        bag, index = bags[t.name]
        for f in t.feature_names:
            jt = d[f]
            idx = torch.tensor([index[k] for k in jt.values().tolist()], dtype=torch.long)
            cols.append(bag(idx, jt.offsets()[:-1], per_sample_weights=jt.weights() if weighted else None))
    return torch.cat(cols, dim=1)


@pytest.mark.parametrize("weighted", [False, True])
def test_forward_gradients_and_fused_step_equal_embedding_bag(weighted):
    cfgs = tables() if not weighted else [DynamicEmbeddingBagConfig(name="users", num_embeddings=10, embedding_dim=8,
                                                                    feature_names=["u", "i", "shared"], block_size=16)]
    kjt = batch(0)
    coll = DynamicEmbeddingBagCollection(cfgs, is_weighted=weighted,
                                         fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR})
    coll(kjt)  # inserts every id of the batch
    bags = as_embedding_bags(coll, cfgs)
    out = coll(kjt)
    expect = reference_forward(bags, cfgs, kjt, weighted)
    torch.testing.assert_close(out.values(), expect, rtol=1e-6, atol=1e-6)
    g = torch.randn(out.values().shape, generator=torch.Generator().manual_seed(1))
    (out.values() * g).sum().backward()  # fused: updates the touched rows in place
    (expect * g).sum().backward()
    after = as_embedding_bags(coll, cfgs)
    for t in cfgs:
        bag, index = bags[t.name]
        new_bag, new_index = after[t.name]
        assert new_index == index  # no row created or lost by the step
        torch.testing.assert_close(new_bag.weight, bag.weight - LR * bag.weight.grad, rtol=1e-6, atol=1e-6)


def test_unfused_blocks_get_the_embedding_bag_gradient():
    cfgs = tables(initial_capacity=2000)
    kjt = batch(2)
    coll = DynamicEmbeddingBagCollection(cfgs)
    coll(kjt)
    bags = as_embedding_bags(coll, cfgs)
    out = coll(kjt).values()
    expect = reference_forward(bags, cfgs, kjt, False)
    torch.testing.assert_close(out, expect, rtol=1e-6, atol=1e-6)
    out.sum().backward()
    expect.sum().backward()
    opt = torch.optim.SGD(coll.parameters(), lr=LR)
    opt.step()
    after = as_embedding_bags(coll, cfgs)
    for t in cfgs:
        bag, _ = bags[t.name]
        torch.testing.assert_close(after[t.name][0].weight, bag.weight - LR * bag.weight.grad)


def test_unseen_ids_get_initializer_values_in_training_and_eval_values_in_eval():
    cfgs = [DynamicEmbeddingBagConfig(name="t", num_embeddings=10, embedding_dim=3, feature_names=["f"],
                                      initializer=Constant(0.25, eval_value=-1.0))]
    coll = DynamicEmbeddingBagCollection(cfgs)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=torch.tensor([7, 7, -BIG]), lengths=torch.tensor([2, 1]))
    torch.testing.assert_close(coll(kjt).values(), torch.tensor([[0.5] * 3, [0.25] * 3]))
    assert coll.table_size("t") == 2 and coll.keys("t").tolist() == [-BIG, 7]
    coll.eval()
    seen_and_not = KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=torch.tensor([7, 8, 9]), lengths=torch.tensor([1, 2]))
    torch.testing.assert_close(coll(seen_and_not).values(), torch.tensor([[0.25] * 3, [-2.0] * 3]))
    assert coll.table_size("t") == 2  # eval inserts nothing


def test_default_initializer_is_torchrecs_and_new_rows_depend_on_the_key_only():
    cfg = lambda: [DynamicEmbeddingBagConfig(name="t", num_embeddings=400, embedding_dim=16, feature_names=["f"])]
    a, b = DynamicEmbeddingBagCollection(cfg()), DynamicEmbeddingBagCollection(cfg())
    ids = torch.randint(-BIG, BIG, (3000,))
    a(KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=ids, lengths=torch.ones(3000, dtype=torch.long)))
    flipped = ids.flip(0)
    b(KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=flipped, lengths=torch.ones(3000, dtype=torch.long)))
    sa, sb = rows_only(a.state_dict()), rows_only(b.state_dict())
    for k in sa:
        assert torch.equal(sa[k].keys, sb[k].keys) and torch.equal(sa[k].values, sb[k].values)
    values = torch.cat([v.values for v in sa.values()])
    bound = (1 / 400) ** 0.5
    assert values.abs().max() <= bound and abs(float(values.var()) - bound**2 / 3) < 0.1 * bound**2 / 3


def test_growth_across_many_blocks_moves_no_row():
    coll = DynamicEmbeddingBagCollection([DynamicEmbeddingBagConfig(
        name="t", num_embeddings=10, embedding_dim=4, feature_names=["f"], block_size=8, initializer=Normal())])
    first = KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=torch.arange(5), lengths=torch.ones(5, dtype=torch.long))
    before = coll(first).values().detach().clone()
    ids = torch.arange(10_000) * 31 - 77
    coll(KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=ids, lengths=torch.ones(10_000, dtype=torch.long)))
    assert coll.table_size("t") == len(set(ids.tolist()) | set(range(5)))
    assert len(coll.embedding_bags["t"].rows.blocks) >= 10_000 // 8
    torch.testing.assert_close(coll(first).values(), before)


@pytest.mark.parametrize("data_type", [DataType.FP16, DataType.BF16])
def test_half_storage(data_type):
    cfg = lambda dt: [DynamicEmbeddingBagConfig(name="t", num_embeddings=100, embedding_dim=8, feature_names=["f"],
                                                data_type=dt)]
    half, full = DynamicEmbeddingBagCollection(cfg(data_type)), DynamicEmbeddingBagCollection(cfg(DataType.FP32))
    kjt = batch(3, keys=("f",))
    dtype = torch.float16 if data_type == DataType.FP16 else torch.bfloat16
    assert half.embedding_bags["t"].rows.blocks[0].dtype == dtype if half.embedding_bags["t"].rows.blocks else True
    out_half, out_full = half(kjt).values(), full(kjt).values()
    assert out_half.dtype == torch.float32
    torch.testing.assert_close(out_half, out_full, rtol=2e-2, atol=2e-2)


def test_shared_name_shares_rows_between_collections():
    release_shared()
    cfg = lambda name, feat: [DynamicEmbeddingBagConfig(name=name, num_embeddings=100, embedding_dim=4,
                                                        feature_names=[feat], shared_name="ids")]
    a = DynamicEmbeddingBagCollection(cfg("a", "f"), fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 1.0})
    b = DynamicEmbeddingBagCollection(cfg("b", "g"), fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 1.0})
    a(KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=torch.tensor([1, 2]), lengths=torch.tensor([2]))).values().sum().backward()
    assert b.table_size("b") == 2
    out = b(KeyedJaggedTensor.from_lengths_sync(keys=["g"], values=torch.tensor([1]), lengths=torch.tensor([1]))).values()
    fresh = DynamicEmbeddingBagCollection([DynamicEmbeddingBagConfig(name="c", num_embeddings=100, embedding_dim=4,
                                                                     feature_names=["g"], seed=a.embedding_bag_configs()[0].seed)])
    init = fresh(KeyedJaggedTensor.from_lengths_sync(keys=["g"], values=torch.tensor([1]), lengths=torch.tensor([1]))).values()
    torch.testing.assert_close(out, init - 1.0)  # b reads the row a's step updated
    with pytest.raises(ValueError, match=r"table 'x': shared_name 'ids' is already used by table 'a'"):
        DynamicEmbeddingBagCollection([DynamicEmbeddingBagConfig(name="x", num_embeddings=100, embedding_dim=8,
                                                                 feature_names=["h"], shared_name="ids")])
    release_shared()


def test_state_dict_round_trip():
    a = DynamicEmbeddingBagCollection(tables())
    a(batch(4))
    b = DynamicEmbeddingBagCollection(tables())
    b(batch(5))  # other keys, dropped by the load
    b.load_state_dict(a.state_dict())
    for name in ("users", "products"):
        assert torch.equal(a.keys(name), b.keys(name))
    a.eval(), b.eval()
    torch.testing.assert_close(b(batch(4)).values(), a(batch(4)).values())
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*bucket_3"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.endswith("users.bucket_3")})


def test_output_matches_torchrec_ebc_layout():
    ours = DynamicEmbeddingBagCollection(tables())
    std = EmbeddingBagCollection([EmbeddingBagConfig(name=t.name, num_embeddings=10, embedding_dim=t.embedding_dim,
                                                     feature_names=t.feature_names, pooling=t.pooling) for t in tables()])
    small = KeyedJaggedTensor.from_lengths_sync(keys=["u", "i", "shared"], values=torch.tensor([1, 2, 3]),
                                                lengths=torch.tensor([1, 0, 1, 0, 0, 1]))
    a, b = ours(small), std(small)
    assert a.keys() == b.keys() and a.length_per_key() == b.length_per_key() and a.values().shape == b.values().shape


def test_empty_batch_and_empty_bags():
    coll = DynamicEmbeddingBagCollection(tables())
    empty = KeyedJaggedTensor.from_lengths_sync(keys=["u", "i", "shared"], values=torch.tensor([], dtype=torch.long),
                                                lengths=torch.tensor([], dtype=torch.long))
    assert coll(empty).values().shape == (0, 24)
    zeros = coll(KeyedJaggedTensor.from_lengths_sync(keys=["u", "i", "shared"], values=torch.tensor([], dtype=torch.long),
                                                     lengths=torch.zeros(6, dtype=torch.long))).values()
    assert zeros.shape == (2, 24) and zeros.abs().sum() == 0 and coll.table_size("users") == 0


def rows_only(state):
    return {k: v for k, v in state.items() if isinstance(v, KeyedRows)}


def _snapshot(coll):
    return {k: (v.keys.clone(), v.values.clone()) for k, v in rows_only(coll.state_dict()).items()}


def _assert_unchanged(coll, snap):
    for k, (keys, values) in snap.items():
        v = coll.state_dict()[k]
        assert torch.equal(v.keys, keys) and torch.equal(v.values, values), k


def test_bad_input_raises_errors_naming_the_table_and_keeps_the_rows():
    coll = DynamicEmbeddingBagCollection(tables())
    coll(batch(6))
    snap = _snapshot(coll)
    floats = KeyedJaggedTensor(keys=["u", "i", "shared"], values=torch.tensor([1.0, 2.0]),
                               lengths=torch.tensor([1, 0, 0, 1, 0, 0]))
    with pytest.raises(ValueError, match=r"\(tables 'users', 'products'\): ids must be a 1-D int32 or int64 tensor, got torch.float32"):
        coll(floats)
    bad_lengths = KeyedJaggedTensor(keys=["u", "i", "shared"], values=torch.tensor([1, 2]),
                                    lengths=torch.tensor([1, 0, 0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"lengths sum to 3 but .* 2 ids"):
        coll(bad_lengths)
    _assert_unchanged(coll, snap)


def test_full_table_raises_naming_the_table_and_keeps_everything():
    coll = DynamicEmbeddingBagCollection([DynamicEmbeddingBagConfig(
        name="users", num_embeddings=10, embedding_dim=4, feature_names=["f"], max_capacity=10)])
    coll(KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=torch.arange(8), lengths=torch.tensor([8])))
    snap = _snapshot(coll)
    with pytest.raises(TableFullError, match=r"table 'users' is full: it holds 8 of max 10 rows .* 3 new ids"):
        coll(KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=torch.tensor([1, 50, 51, 52]), lengths=torch.tensor([4])))
    _assert_unchanged(coll, snap)


def test_bad_configs_raise_errors_naming_the_table():
    with pytest.raises(ValueError, match=r"dynamic table 'x': max_capacity 5 is below initial_capacity 10"):
        DynamicEmbeddingBagConfig(name="x", num_embeddings=10, embedding_dim=4, initial_capacity=10, max_capacity=5)
    with pytest.raises(ValueError, match=r"dynamic table 'x': data_type INT8 is not supported"):
        DynamicEmbeddingBagConfig(name="x", num_embeddings=10, embedding_dim=4, data_type=DataType.INT8)
    with pytest.raises(TypeError, match=r"dynamic table 'x': initializer must come from torchrec_ext.initializers"):
        DynamicEmbeddingBagConfig(name="x", num_embeddings=10, embedding_dim=4, initializer=0.1)
    with pytest.raises(ValueError, match=r"fused optimizer lamb is not supported for dynamic tables"):
        DynamicEmbeddingBagCollection(tables(), fused_params={"optimizer": EmbOptimType.LAMB})
    with pytest.raises(ValueError, match=r"dynamic table 'x': grad_reduce_by must be 'sum' or 'id'"):
        DynamicEmbeddingBagConfig(name="x", num_embeddings=10, embedding_dim=4, grad_reduce_by="max")


def test_meta_device_for_planning():
    coll = DynamicEmbeddingBagCollection(tables(), device="meta")
    out = coll(KeyedJaggedTensor.from_lengths_sync(keys=["u", "i", "shared"], values=torch.tensor([1, 2], device="meta"),
                                                   lengths=torch.tensor([1, 0, 0, 1, 0, 0], device="meta")))
    assert out.values().shape == (2, 24) and out.values().is_meta


def test_deepcopy_is_independent_and_new_blocks_become_parameters():
    import copy

    a = DynamicEmbeddingBagCollection(tables())
    a(batch(8))
    b = copy.deepcopy(a)
    b(batch(9, n_ids=5000, batch_size=200))  # b grows; a must not
    assert a.table_size("users") < b.table_size("users")
    assert len(list(a.parameters())) == len(a.embedding_bags["users"].rows.blocks) + \
        len(a.embedding_bags["products"].rows.blocks)
    assert len(list(b.parameters())) == len(b.embedding_bags["users"].rows.blocks) + \
        len(b.embedding_bags["products"].rows.blocks) > len(list(a.parameters()))
