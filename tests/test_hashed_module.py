"""HashedEmbeddingBagCollection as a drop-in EBC: contract, training, state, bad input."""

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import hashed_reference as ref
from torchrec_ext import HashedEmbeddingBagCollection, HashedEmbeddingBagConfig


def tables():
    return [
        HashedEmbeddingBagConfig(name="t0", num_embeddings=500, embedding_dim=8, feature_names=["a", "shared"],
                                 mode="element", compression=0.1),
        HashedEmbeddingBagConfig(name="t1", num_embeddings=300, embedding_dim=4, feature_names=["b", "shared"],
                                 pooling=PoolingType.MEAN, compression=0.2),
    ]


def kjt(values=(1, 2, 3, 4, 5, 6, 7, 8), lengths=(2, 0, 1, 1, 2, 2), keys=("a", "b", "shared")):
    return KeyedJaggedTensor.from_lengths_sync(keys=list(keys), values=torch.tensor(values, dtype=torch.long),
                                               lengths=torch.tensor(lengths))


def test_output_keys_and_shapes_match_torchrec_ebc():
    ours = HashedEmbeddingBagCollection(tables())
    std = EmbeddingBagCollection([EmbeddingBagConfig(name=t.name, num_embeddings=t.num_embeddings,
                                                     embedding_dim=t.embedding_dim, feature_names=t.feature_names,
                                                     pooling=t.pooling) for t in tables()])
    a, b = ours(kjt()), std(kjt())
    assert a.keys() == b.keys() and a.length_per_key() == b.length_per_key()
    assert a.values().shape == b.values().shape


def test_each_feature_equals_the_reference_formula():
    m = HashedEmbeddingBagCollection(tables())
    out = m(kjt()).to_dict()
    t0, t1 = m.embedding_bag_configs()
    w0, w1 = m.embedding_bags["t0"].weight.detach(), m.embedding_bags["t1"].weight.detach()
    # feature "a": bags [1,2] and []; "shared@t1": bags [7,8] for sample 0 ... MEAN
    torch.testing.assert_close(out["a"], ref.pooled(t0, w0, [1, 2], torch.tensor([0, 2, 2])).float())
    torch.testing.assert_close(out["shared@t1"], ref.pooled(t1, w1, [5, 6, 7, 8], torch.tensor([0, 2, 4]), mean=True).float())
    torch.testing.assert_close(out["b"], ref.pooled(t1, w1, [3, 4], torch.tensor([0, 1, 2]), mean=True).float())


def test_trains_with_a_plain_torch_optimizer():
    torch.manual_seed(0)
    m = HashedEmbeddingBagCollection(tables())
    target = torch.randn(2, 8 + 8 + 4 + 4)
    opt = torch.optim.Adagrad(m.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (m(kjt()).values() - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_state_dict_round_trip_and_deterministic_init():
    a, b = HashedEmbeddingBagCollection(tables()), HashedEmbeddingBagCollection(tables())
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])  # init is a function of the config alone
        assert v.shape == (a.embedding_bag_configs()[0].buffer_rows if "t0" in k else
                           a.embedding_bag_configs()[1].buffer_rows, v.shape[1])
    with torch.no_grad():
        a.embedding_bags["t0"].weight.mul_(3)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(kjt()).values(), a(kjt()).values())


def test_meta_device_for_planning():
    m = HashedEmbeddingBagCollection(tables(), device="meta")
    assert m.embedding_bags["t0"].weight.is_meta
    out = m(KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "shared"], values=torch.tensor([1, 2], device="meta"),
                                                lengths=torch.tensor([1, 0, 0, 1, 0, 0], device="meta")))
    assert out.values().shape == (2, 24)


def test_empty_batch_and_empty_bags():
    m = HashedEmbeddingBagCollection(tables())
    empty = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "shared"], values=torch.tensor([], dtype=torch.long),
                                                lengths=torch.tensor([], dtype=torch.long))
    assert m(empty).values().shape == (0, 24)
    zeros = m(kjt(values=(), lengths=(0, 0, 0, 0, 0, 0))).values()
    assert zeros.shape == (2, 24) and zeros.abs().sum() == 0


@pytest.mark.parametrize("values,lengths,match", [
    ((1, -2, 3, 4, 5, 6, 7, 8), (2, 0, 1, 1, 2, 2), r"table 't0': negative id -2"),
    ((1, 2, 3, 4, 5, 6, 7, 500), (2, 0, 1, 1, 2, 2), r"table 't0': id 500 is out of range"),
    ((1, 2, 3, 300, 5, 6, 7, 8), (2, 0, 1, 1, 2, 2), r"table 't1': id 300 is out of range"),
    ((1, 2, 3, 4, 5, 6, 7, 8), (2, 0, 1, 1, 2, 3), r"lengths sum to 9 but .* 8 ids"),
])
def test_bad_ids_raise_errors_naming_the_table(values, lengths, match):
    m = HashedEmbeddingBagCollection(tables())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        m(kjt(values, lengths))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])


def test_float_ids_raise():
    m = HashedEmbeddingBagCollection(tables())
    bad = KeyedJaggedTensor(keys=["a", "b", "shared"], values=torch.tensor([1.0, 2.0]),
                            lengths=torch.tensor([1, 0, 0, 1, 0, 0]))
    with pytest.raises(ValueError, match=r"table 't0': ids must be int32 or int64, got torch.float32"):
        m(bad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(compression=0.0), r"table 'x': compression must be in \(0, 1\], got 0.0"),
    (dict(compression=1.5), r"table 'x': compression must be in \(0, 1\], got 1.5"),
    (dict(mode="blocks"), r"table 'x': mode must be"),
    (dict(mode="block", chunk_size=3), r"table 'x': chunk_size 3 must divide"),
])
def test_bad_configs_raise_errors_naming_the_table(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HashedEmbeddingBagConfig(name="x", num_embeddings=10, embedding_dim=8, **kwargs)


def test_weighted_mean_is_refused_like_torchrec():
    cfg = HashedEmbeddingBagConfig(name="x", num_embeddings=10, embedding_dim=8, pooling=PoolingType.MEAN)
    with pytest.raises(ValueError, match=r"table 'x': MEAN pooling with per-sample weights"):
        HashedEmbeddingBagCollection([cfg], is_weighted=True)
