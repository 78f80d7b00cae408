"""Every torchrec_ext collection is a drop-in EBC: contract, training, state, bad input."""

import re

import pytest
import torch
from sample_tables import hashed_tables, kjt, qr_tables
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext import HashedEmbeddingBagCollection, QREmbeddingBagCollection

KINDS = {
    "hashed": (HashedEmbeddingBagCollection, hashed_tables),
    "qr": (QREmbeddingBagCollection, qr_tables),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return KINDS[request.param]


def test_output_keys_and_shapes_match_torchrec_ebc(kind):
    cls, tables = kind
    ours = cls(tables())
    std = EmbeddingBagCollection([EmbeddingBagConfig(name=t.name, num_embeddings=t.num_embeddings,
                                                     embedding_dim=t.embedding_dim, feature_names=t.feature_names,
                                                     pooling=t.pooling) for t in tables()])
    a, b = ours(kjt()), std(kjt())
    assert a.keys() == b.keys() and a.length_per_key() == b.length_per_key()
    assert a.values().shape == b.values().shape


def test_trains_with_a_plain_torch_optimizer(kind):
    cls, tables = kind
    torch.manual_seed(0)
    m = cls(tables())
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


def test_state_dict_round_trip_and_deterministic_init(kind):
    cls, tables = kind
    a, b = cls(tables()), cls(tables())
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])  # init is a function of the config alone
    with torch.no_grad():
        for p in a.embedding_bags["t0"].parameters():
            p.mul_(3)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(kjt()).values(), a(kjt()).values())


def test_meta_device_for_planning(kind):
    cls, tables = kind
    m = cls(tables(), device="meta")
    assert all(p.is_meta for p in m.parameters())
    out = m(KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "shared"], values=torch.tensor([1, 2], device="meta"),
                                                lengths=torch.tensor([1, 0, 0, 1, 0, 0], device="meta")))
    assert out.values().shape == (2, 24)


def test_empty_batch_and_empty_bags(kind):
    cls, tables = kind
    m = cls(tables())
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
def test_bad_ids_raise_errors_naming_the_table(kind, values, lengths, match):
    cls, tables = kind
    m = cls(tables())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        m(kjt(values, lengths))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])


def test_float_ids_raise(kind):
    cls, tables = kind
    m = cls(tables())
    bad = KeyedJaggedTensor(keys=["a", "b", "shared"], values=torch.tensor([1.0, 2.0]),
                            lengths=torch.tensor([1, 0, 0, 1, 0, 0]))
    with pytest.raises(ValueError, match=r"\(tables 't0', 't1'\): ids must be a 1-D int32 or int64 tensor, got torch.float32"):
        m(bad)


def test_weighted_mean_is_refused_like_torchrec(kind):
    cls, tables = kind
    with pytest.raises(ValueError, match=r"table 't1': MEAN pooling with per-sample weights"):
        cls(tables(), is_weighted=True)


def test_a_collection_refuses_another_kind_of_config():
    with pytest.raises(TypeError, match=r"table 't0' needs a QREmbeddingBagConfig"):
        QREmbeddingBagCollection(hashed_tables())


@pytest.mark.parametrize("name", ["items", "keys", "a.b"])
def test_a_table_name_the_module_dict_cannot_hold_raises_naming_it(kind, name):
    """(nn.ModuleDict raised a bare KeyError "attribute 'items' already exists".)"""
    cls, tables = kind
    cfgs = tables()
    cfgs[0].name = name
    with pytest.raises(ValueError, match=rf"table '{re.escape(name)}': a table name must not contain '\.'"):
        cls(cfgs)


def test_an_unweighted_collection_ignores_any_weights(kind):
    """(An unweighted collection handed int64 weights failed in TorchRec's permute.)"""
    cls, tables = kind
    m = cls(tables())
    base = kjt()
    plain = m(base).values()
    ints = KeyedJaggedTensor(keys=base.keys(), values=base.values(), lengths=base.lengths(),
                             weights=torch.arange(base.values().numel()))
    torch.testing.assert_close(m(ints).values(), plain)
