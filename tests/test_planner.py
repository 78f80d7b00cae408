"""The planner charges hashed tables their real bytes and plans what only they make fit."""

import pytest
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.planner import ParameterConstraints, Topology
from torchrec.distributed.planner.types import PlannerError
from torchrec.distributed.types import ShardingType

from torchrec_ext import HashedEmbeddingBagCollection, HashedEmbeddingBagConfig
from torchrec_ext.sharding import get_sharders, make_planner

GB = 1024 ** 3


class Model(nn.Module):
    def __init__(self, hashed_rows, compression, std_rows=1000):
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name="std", num_embeddings=std_rows, embedding_dim=64, feature_names=["s"])],
            device="meta",
        )
        self.hebc = HashedEmbeddingBagCollection(
            tables=[HashedEmbeddingBagConfig(name=f"h{i}", num_embeddings=hashed_rows, embedding_dim=64,
                                             feature_names=[f"f{i}"], compression=compression)
                    for i in range(4)],
            device="meta",
        )




@pytest.mark.parametrize("opt,extra_per_row", [(EmbOptimType.EXACT_SGD, 0), (EmbOptimType.EXACT_ROWWISE_ADAGRAD, 4)])
def test_plan_charges_buffer_plus_optimizer_state(opt, extra_per_row):
    model = Model(hashed_rows=10_000_000, compression=0.01)
    cfg = model.hebc.embedding_bag_configs()[0]
    topology = Topology(world_size=2, compute_device="cpu")
    sharders = get_sharders(fused_params={"optimizer": opt, "learning_rate": 0.1})
    constraints = {f"h{i}": ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value]) for i in range(4)}
    planner = make_planner(topology, batch_size=64, constraints=constraints)
    options = planner._enumerator.enumerate(model, sharders)
    expected = cfg.buffer_rows * cfg.embedding_dim * 4 + cfg.buffer_rows * extra_per_row
    virtual = cfg.num_embeddings * cfg.embedding_dim * 4
    checked = 0
    for o in options:
        if o.name == "h0":
            checked += 1
            charged = sum(s.storage.ddr for s in o.shards)
            # TorchRec adds its I/O buffers to every table; those are small at batch 64.
            assert abs(charged - expected) / expected < 0.05, (charged, expected)
            assert charged < virtual / 50
    assert checked == 1


def test_hashed_tables_get_a_plan_where_full_tables_cannot():
    # 4 tables of 50M x 64 fp32 = 12.8 GB each; the topology has 2 x 4 GB of DDR.
    topology = Topology(world_size=2, compute_device="cpu", ddr_cap=4 * GB)
    sharders = get_sharders()
    full = nn.Module()
    full.ebc = EmbeddingBagCollection(
        tables=[EmbeddingBagConfig(name=f"t{i}", num_embeddings=50_000_000, embedding_dim=64, feature_names=[f"f{i}"])
                for i in range(4)],
        device="meta",
    )
    with pytest.raises(PlannerError):
        make_planner(topology, batch_size=64).plan(full, sharders)
    hashed = Model(hashed_rows=50_000_000, compression=0.01)
    plan = make_planner(topology, batch_size=64).plan(hashed, sharders)
    assert set(plan.plan["hebc"].keys()) == {"h0", "h1", "h2", "h3"}


def test_row_wise_is_dropped_when_world_size_does_not_divide_regions():
    topology = Topology(world_size=3, compute_device="cpu")
    model = nn.Module()
    model.hebc = HashedEmbeddingBagCollection(
        tables=[HashedEmbeddingBagConfig(name="h", num_embeddings=9000, embedding_dim=16, feature_names=["f"],
                                         row_regions=8)],
        device="meta",
    )
    rw_only = {"h": ParameterConstraints(sharding_types=[ShardingType.ROW_WISE.value])}
    with pytest.raises(ValueError, match=r"table 'h'.*row_regions=8"):
        make_planner(topology, batch_size=8, constraints=rw_only).plan(model, get_sharders())
    model.hebc = HashedEmbeddingBagCollection(
        tables=[HashedEmbeddingBagConfig(name="h", num_embeddings=9000, embedding_dim=16, feature_names=["f"],
                                         row_regions=6)],
        device="meta",
    )
    plan = make_planner(topology, batch_size=8, constraints=rw_only).plan(model, get_sharders())
    assert plan.plan["hebc"]["h"].sharding_type == ShardingType.ROW_WISE.value
