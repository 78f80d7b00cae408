"""Hashed tables: the reference formula and config validation (the EBC contract is in
test_collection_contract.py)."""

import hashed_reference as ref
import pytest
import torch
from sample_tables import hashed_tables as tables
from sample_tables import kjt

from torchrec_ext import HashedEmbeddingBagCollection, HashedEmbeddingBagConfig


def test_each_feature_equals_the_reference_formula():
    m = HashedEmbeddingBagCollection(tables())
    out = m(kjt()).to_dict()
    t0, t1 = m.embedding_bag_configs()
    w0, w1 = m.embedding_bags["t0"].weight.detach(), m.embedding_bags["t1"].weight.detach()
    # feature "a": bags [1,2] and []; "shared@t1": bags [7,8] for sample 0 ... MEAN
    torch.testing.assert_close(out["a"], ref.pooled(t0, w0, [1, 2], torch.tensor([0, 2, 2])).float())
    torch.testing.assert_close(out["shared@t1"], ref.pooled(t1, w1, [5, 6, 7, 8], torch.tensor([0, 2, 4]), mean=True).float())
    torch.testing.assert_close(out["b"], ref.pooled(t1, w1, [3, 4], torch.tensor([0, 1, 2]), mean=True).float())


@pytest.mark.parametrize("kwargs,match", [
    (dict(compression=0.0), r"table 'x': compression must be in \(0, 1\], got 0.0"),
    (dict(compression=1.5), r"table 'x': compression must be in \(0, 1\], got 1.5"),
    (dict(mode="blocks"), r"table 'x': mode must be"),
    (dict(mode="block", chunk_size=3), r"table 'x': chunk_size 3 must divide"),
    (dict(mode="block", chunk_size=8, block_align=3), r"table 'x': block_align 3 must divide the chunk size 8"),
    (dict(mode="block", block_align=-1), r"table 'x': block_align -1 must divide"),
])
def test_bad_configs_raise_errors_naming_the_table(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HashedEmbeddingBagConfig(name="x", num_embeddings=10, embedding_dim=8, **kwargs)

