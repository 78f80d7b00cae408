"""Sharded == unsharded under TorchRec's DMP on gloo, at 2 and 4 ranks, and checkpoints
that move between plans and world sizes. One spawned world per world size runs all
scenarios (see dist_harness.py); each test reports its own scenario."""

import os

import dist_scenarios as sc
import pytest
import torch
from dist_harness import run_world

CHECKPOINT = ["checkpoint_save"]


@pytest.fixture(scope="session")
def worlds(tmp_path_factory):
    ckpt = str(tmp_path_factory.mktemp("ckpt"))
    out = {}
    out[2] = run_world(2, "dist_scenarios", sc.EQUIVALENCE + CHECKPOINT + sc.DYNAMIC_EQUIVALENCE
                       + ["dyn_checkpoint_save", "sharded_fuzz"], str(tmp_path_factory.mktemp("w2")), ckpt_dir=ckpt)
    out[4] = run_world(4, "dist_scenarios", sc.EQUIVALENCE + ["checkpoint_load", "torn_checkpoint"]
                       + sc.DYNAMIC_EQUIVALENCE + ["dyn_checkpoint_load"], str(tmp_path_factory.mktemp("w4")), ckpt_dir=ckpt)
    out["ckpt"] = ckpt
    return out


def _check(worlds, world_size, name):
    outcome = worlds[world_size][name]
    assert outcome == "ok", outcome


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("scenario", sc.EQUIVALENCE)
def test_sharded_equals_unsharded(worlds, world_size, scenario):
    _check(worlds, world_size, scenario)


def test_random_batches_on_2_ranks_match_unsharded_or_raise_on_every_rank(worlds):
    """tests/dist_fuzz_scenarios.py: 40 Hypothesis batches, row-wise hashed, QR and dynamic."""
    _check(worlds, 2, "sharded_fuzz")


def test_checkpoint_saved_row_wise_on_2_ranks(worlds):
    _check(worlds, 2, "checkpoint_save")


def test_checkpoint_loads_column_wise_on_4_ranks(worlds):
    _check(worlds, 2, "checkpoint_save")
    _check(worlds, 4, "checkpoint_load")


def test_a_torn_checkpoint_raises_on_every_rank_and_loads_nothing(worlds):
    _check(worlds, 4, "torn_checkpoint")


def test_checkpoint_loads_unsharded_in_one_process(worlds):
    """World size 1: the 2-rank DCP checkpoint loads into the plain, unsharded model."""
    import torch.distributed.checkpoint as dcp

    _check(worlds, 2, "checkpoint_save")
    expected = torch.load(os.path.join(worlds["ckpt"], "expected.pt"))
    torch.manual_seed(321)
    model = sc.TwoCollections()
    state = model.state_dict()
    dcp.load(state, checkpoint_id=worlds["ckpt"])
    model.load_state_dict(state)
    for key, value in expected.items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("scenario", sc.DYNAMIC_EQUIVALENCE)
def test_dynamic_sharded_equals_unsharded(worlds, world_size, scenario):
    """Outputs, inserted keys and their values after two fused steps; row-wise: each key on one rank."""
    _check(worlds, world_size, scenario)


def test_dynamic_checkpoint_saved_row_wise_on_2_ranks(worlds):
    _check(worlds, 2, "dyn_checkpoint_save")


def test_dynamic_checkpoint_loads_row_and_column_wise_on_4_ranks(worlds):
    _check(worlds, 2, "dyn_checkpoint_save")
    _check(worlds, 4, "dyn_checkpoint_load")


def test_dynamic_checkpoint_loads_unsharded_in_one_process(worlds):
    """World size 1: the 2-rank checkpoint's rows, optimizer state and metadata, and further
    steps, unsharded."""
    import dist_dynamic_scenarios as dyn
    import torch.distributed.checkpoint as dcp

    _check(worlds, 2, "dyn_checkpoint_save")
    path = os.path.join(worlds["ckpt"], "dynamic")
    expected = torch.load(os.path.join(path, "expected.pt"), weights_only=False)
    torch.manual_seed(321)
    model = dyn.WithDynamic("adam", lifecycle=True)
    state = model.state_dict()
    dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state)
    dyn.assert_same_rows(model.state_dict(), expected)
    dyn.assert_dense_match(model.state_dict(), expected)
    ref = dyn.WithDynamic("adam", lifecycle=True)
    ref.load_state_dict(expected)
    for s in range(3):
        batch = dyn.kjt_for(dyn.global_kjt(2, 20 + s), 0, 2 * dyn.PER_RANK_BATCH)
        grad_out = torch.randn(2 * dyn.PER_RANK_BATCH, dyn.OUT_DIM, generator=torch.Generator().manual_seed(30 + s))
        torch.testing.assert_close(dyn.step(model, batch, grad_out, 2), dyn.step(ref, batch, grad_out, 2))
    dyn.assert_same_rows(model.state_dict(), ref.state_dict())
