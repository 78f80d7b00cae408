"""A table kind registered from outside the package is planned and sharded by
torchrec_ext's planner and DMP, table-wise, next to a standard table (the scenario runs
in a 2-process gloo world)."""

import torch
from dist_harness import run_world
from toy_kind import ExtEmbeddingBagCollection, ScaledEmbeddingBagConfig, coordinate_values, reference_pool


def test_toy_kind_unsharded_matches_its_formula():
    from torchrec import KeyedJaggedTensor

    ebc = ExtEmbeddingBagCollection([ScaledEmbeddingBagConfig(name="toy", num_embeddings=40, embedding_dim=4,
                                                              feature_names=["f"], scale=3.0)])
    ids, lengths = torch.tensor([1, 5, 7, 39]), torch.tensor([2, 0, 2])
    out = ebc(KeyedJaggedTensor.from_lengths_sync(["f"], ids, lengths))["f"]
    torch.testing.assert_close(out, reference_pool(coordinate_values(40, 4, 0, 0), 3.0, ids, lengths))


def test_toy_kind_is_planned_and_sharded_table_wise(tmp_path):
    outcome = run_world(2, "toy_kind_scenarios", ["toy_sharded_next_to_a_standard_table"], str(tmp_path))
    assert outcome["toy_sharded_next_to_a_standard_table"] == "ok", outcome
