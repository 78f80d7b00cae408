"""torchrec_ext.nn's modules against torch's own nn.functional.embedding_bag over the same
virtual weights (hashed_reference / qr_reference materialise them differentiably, so the
buffer's gradients are compared too), for sum, mean and max, 1-D input with offsets (with and
without the last offset), 2-D input, per-sample weights and empty bags; and the dynamic
module against a dict of its rows."""

import hashed_reference
import numpy as np
import pytest
import qr_reference
import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext.modules.dynamic_rows import KeyedRows
from torchrec_ext.modules.nn_bags import max_bags
from torchrec_ext.nn import (
    DynamicEmbedding,
    DynamicEmbeddingBag,
    HashedEmbedding,
    HashedEmbeddingBag,
    QREmbedding,
    QREmbeddingBag,
)

N, D = 300, 8


def hashed(mode, **kw):
    bag = HashedEmbeddingBag(N, D, compression=0.2, mode=mode, hash_mode="element", signed=True, **kw)
    return bag, lambda: hashed_reference.virtual_rows(bag.config, bag.weight, np.arange(N))


def qr(mode, **kw):
    bag = QREmbeddingBag(N, D, num_collisions=17, operation="add", mode=mode, **kw)
    return bag, lambda: qr_reference.composed(bag.config, list(bag.weights), list(range(N)))


def rows_of(module):
    """A dynamic module's rows by key, from its state dict."""
    entries = [v for v in module.collection.state_dict().values() if isinstance(v, KeyedRows)]
    return {int(k): v for e in entries for k, v in zip(e.keys, e.values)}


INPUTS = {
    # name: (input, offsets as nn.EmbeddingBag takes them, include_last_offset)
    "1d": (torch.tensor([3, 299, 3, 0, 17, 250, 4]), torch.tensor([0, 2, 2, 5]), False),  # bag 1 empty
    "1d_last_offset": (torch.tensor([3, 299, 3, 0, 17]), torch.tensor([0, 1, 1, 5]), True),
    "2d": (torch.tensor([[1, 2, 3], [299, 0, 299]]), None, False),
    "2d_int32": (torch.tensor([[5, 6]], dtype=torch.int32), None, False),
}


@pytest.mark.parametrize("make", [hashed, qr], ids=["hashed", "qr"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("case", list(INPUTS))
@pytest.mark.parametrize("weighted", [False, True])
def test_equals_functional_embedding_bag_on_the_virtual_weights(make, mode, case, weighted):
    if weighted and mode != "sum":
        pytest.skip("per-sample weights need sum pooling (as nn.EmbeddingBag)")
    ids, offsets, last = INPUTS[case]
    bag, virtual = make(mode, include_last_offset=last)
    psw = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) + 0.5 if weighted else None
    out = bag(ids, offsets, psw)
    expect = F.embedding_bag(ids.long(), virtual(), offsets, mode=mode, per_sample_weights=psw,
                             include_last_offset=last)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    params = list(bag.parameters())
    got = torch.autograd.grad((out * g).sum(), params)
    want = torch.autograd.grad((expect * g).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_module_and_the_collection_are_one_function():
    bag = HashedEmbeddingBag(N, D, compression=0.1)

    w = torch.tensor([0.5, 2.0, 1.0])
    kjt = KeyedJaggedTensor.from_lengths_sync(["hashed"], torch.tensor([1, 2, 3]), torch.tensor([2, 1]), weights=w)
    torch.testing.assert_close(bag(torch.tensor([1, 2, 3]), torch.tensor([0, 2]), w), bag.collection(kjt)["hashed"])


def test_dynamic_bag_rows_appear_on_first_sight_and_pool_like_a_dict():
    bag = DynamicEmbeddingBag(4, mode="mean", block_size=8)
    ids = torch.tensor([10**15, -3, 10**15, 7])
    out = bag(ids, torch.tensor([0, 3, 3]))
    assert len(bag) == 3
    rows = rows_of(bag)
    torch.testing.assert_close(out[0], (2 * rows[10**15] + rows[-3]) / 3)
    torch.testing.assert_close(out[1], torch.zeros(4))  # the empty bag
    bag.eval()
    bag(torch.tensor([[123456789]]))
    assert len(bag) == 3  # eval inserts nothing


@pytest.mark.parametrize("call, message", [
    (lambda b: b(torch.tensor([1.0])), "input must be an int32 or int64 tensor"),
    (lambda b: b(torch.tensor([1, 2])), "a 1-D input needs 1-D int32 or int64 offsets"),
    (lambda b: b(torch.tensor([[1, 2]]), torch.tensor([0])), "offsets must be None for a 2-D input"),
    (lambda b: b(torch.tensor([1, 2]), torch.tensor([1])), "offsets must start at 0"),
    (lambda b: b(torch.tensor([1, 2]), torch.tensor([0, 3])), "offsets must start at 0"),
    (lambda b: b(torch.tensor([1, 400]), torch.tensor([0])), "table 'hashed': id 400 is out of range"),
    (lambda b: b(torch.tensor([1, -1]), torch.tensor([0])), "table 'hashed': negative id -1"),
    (lambda b: b(torch.tensor([1, 2]), torch.tensor([0]), torch.tensor([1.0])), "per_sample_weights must have"),
    (lambda b: b(torch.tensor([1, 2]), torch.tensor([0]), torch.tensor([1.0, float("nan")])), "NaN or inf"),
    (lambda b: b(torch.tensor([[[1]]])), "input must be 1-D .* or 2-D, got 3-D"),
])
def test_bad_input_raises_naming_the_table(call, message):
    bag = HashedEmbeddingBag(N, D, compression=0.2)
    before = bag.weight.detach().clone()
    with pytest.raises(ValueError, match=f"table 'hashed': .*{message}|{message}"):
        call(bag)
    assert torch.equal(bag.weight, before)


def test_unsupported_modes_raise_naming_the_table():
    with pytest.raises(ValueError, match="table 'q': mode 'min' is not supported"):
        QREmbeddingBag(N, D, num_collisions=10, mode="min", name="q")
    with pytest.raises(ValueError, match="per_sample_weights need mode 'sum'"):
        QREmbeddingBag(N, D, num_collisions=10)(torch.tensor([1]), torch.tensor([0]), torch.tensor([1.0]))


@pytest.mark.parametrize("kind", ["hashed", "qr"])
def test_embedding_forms_equal_functional_embedding_on_the_virtual_weights(kind):
    if kind == "hashed":
        emb = HashedEmbedding(N, D, compression=0.2, hash_mode="element", signed=True)
        virtual = lambda: hashed_reference.virtual_rows(emb.config, emb.weight, np.arange(N))  # noqa: E731
    else:
        emb = QREmbedding(N, D, num_collisions=17, operation="mult")
        virtual = lambda: qr_reference.composed(emb.config, list(emb.weights), list(range(N)))  # noqa: E731
    ids = torch.tensor([[3, 299, 3], [0, 17, 250]])
    out = emb(ids)
    expect = F.embedding(ids, virtual())
    assert out.shape == (2, 3, D)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    params = list(emb.parameters())
    for a, b in zip(torch.autograd.grad((out * g).sum(), params), torch.autograd.grad((expect * g).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert emb(torch.zeros(0, dtype=torch.long)).shape == (0, D)


def test_dynamic_embedding_gives_each_id_its_row():
    emb = DynamicEmbedding(4, block_size=8)
    ids = torch.tensor([5, -(2**62), 5])
    out = emb(ids)
    rows = rows_of(emb)
    torch.testing.assert_close(out, torch.stack([rows[5], rows[-(2**62)], rows[5]]))
    with pytest.raises(ValueError, match="table 'dynamic': input must be an int32 or int64 tensor"):
        emb(torch.tensor([1.5]))


def test_max_gives_the_gradient_to_the_first_of_equal_elements():
    """Ties within a bag (the same id twice, or two ids sharing a buffer element) send
    the whole gradient to the first, as nn.EmbeddingBag's max does."""
    bag = DynamicEmbeddingBag(2, mode="max", block_size=4)
    out = bag(torch.tensor([[7, 7, 9]]))
    rows = rows_of(bag)
    torch.testing.assert_close(out[0], torch.maximum(rows[7], rows[9]))
    rows_t = torch.stack([rows[7], rows[7], rows[9]]).requires_grad_()
    max_bags(rows_t, torch.tensor([0, 3])).sum().backward()
    winner = torch.where(rows[7] >= rows[9], 0, 2)
    expect = torch.zeros(3, 2)
    expect[winner, torch.arange(2)] = 1.0
    assert torch.equal(rows_t.grad, expect)
