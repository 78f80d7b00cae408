"""Hashed and QR collections, next to a standard TorchRec EBC, go through torch.export and
run from the exported program with the eager model's outputs (on batches other than the
one traced, of the same shapes). While a graph is traced the collections skip the input
checks that read tensor values; the native ops' own checks still guard the program."""

import pytest
import torch
from sample_tables import hashed_tables, qr_tables
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext import HashedEmbeddingBagCollection, QREmbeddingBagCollection


class Model(nn.Module):
    def __init__(self, ours):
        super().__init__()
        self.std = EmbeddingBagCollection([EmbeddingBagConfig(name="std", num_embeddings=50, embedding_dim=4,
                                                              feature_names=["a"])])
        self.ours = ours

    def forward(self, kjt):
        return torch.cat([self.std(kjt).values(), self.ours(kjt).values()], dim=1)


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return KeyedJaggedTensor.from_lengths_sync(keys=["a", "b", "shared"], values=torch.randint(0, 50, (8,), generator=g),
                                               lengths=torch.tensor([2, 0, 1, 1, 2, 2]))


@pytest.mark.parametrize("make", [lambda: HashedEmbeddingBagCollection(hashed_tables()),
                                  lambda: QREmbeddingBagCollection(qr_tables())], ids=["hashed", "qr"])
def test_exported_program_gives_the_eager_outputs(make):
    model = Model(make()).eval()
    exported = torch.export.export(model, (batch(0),), strict=False)
    run = exported.module()
    for seed in (1, 2):
        torch.testing.assert_close(run(batch(seed)), model(batch(seed)))


@pytest.mark.parametrize("make", [lambda: HashedEmbeddingBagCollection(hashed_tables()),
                                  lambda: QREmbeddingBagCollection(qr_tables())], ids=["hashed", "qr"])
def test_compiled_collection_gives_the_eager_outputs_and_gradients(make):
    coll = make()
    compiled = torch.compile(coll, backend="aot_eager", fullgraph=True)
    for seed in (1, 2):
        eager_out = coll(batch(seed)).values()
        eager_grads = torch.autograd.grad(eager_out.sum(), list(coll.parameters()))
        out = compiled(batch(seed)).values()
        torch.testing.assert_close(out, eager_out)
        for a, b in zip(torch.autograd.grad(out.sum(), list(coll.parameters())), eager_grads):
            torch.testing.assert_close(a, b)
