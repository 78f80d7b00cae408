"""The planner charges torchrec_ext tables their real bytes (hashed buffers, QR partition
tables, each with optimizer state) and plans what only they make fit."""

import pytest
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.planner import ParameterConstraints, Topology
from torchrec.distributed.planner.types import PlannerError
from torchrec.distributed.types import ShardingType

from torchrec_ext import (
    HashedEmbeddingBagCollection,
    HashedEmbeddingBagConfig,
    QREmbeddingBagCollection,
    QREmbeddingBagConfig,
)
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


def qr_model(**kw):
    model = nn.Module()
    model.qebc = QREmbeddingBagCollection(
        tables=[QREmbeddingBagConfig(name="q", num_embeddings=10_000_000, embedding_dim=64, feature_names=["f"], **kw)],
        device="meta",
    )
    return model


@pytest.mark.parametrize("sharding_type", [ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value,
                                           ShardingType.COLUMN_WISE.value])
@pytest.mark.parametrize("opt,state_per_row", [(EmbOptimType.EXACT_SGD, 0), (EmbOptimType.EXACT_ROWWISE_ADAGRAD, 4)])
def test_plan_charges_qr_partition_tables_plus_optimizer_state(sharding_type, opt, state_per_row):
    # quotient table 2500 x 64, remainder table 4000 x 64 (1 MB in all, vs 2.56 GB full)
    model = qr_model(num_collisions=4000)
    world = 2
    constraints = {"q": ParameterConstraints(sharding_types=[sharding_type], min_partition=32)}
    sharders = get_sharders(fused_params={"optimizer": opt, "learning_rate": 0.1})
    options = make_planner(Topology(world_size=world, compute_device="cpu"), batch_size=64,
                           constraints=constraints)._enumerator.enumerate(model, sharders)
    (option,) = [o for o in options if o.name == "q"]
    q_rows, r_rows = 2500, 4000
    table_rows = q_rows + r_rows
    if sharding_type == ShardingType.ROW_WISE.value:
        # every rank holds its quotient rows and a replica of the remainder table
        table_rows = q_rows + world * r_rows
    shards = 2 if sharding_type == ShardingType.COLUMN_WISE.value else 1
    expected = table_rows * 64 * 4 + table_rows * state_per_row * shards
    charged = sum(s.storage.ddr for s in option.shards)
    assert abs(charged - expected) / expected < 0.05, (charged, expected)


def test_crt_tables_get_no_row_wise_plan():
    model = qr_model(partition="crt", factors=[3163, 3167])
    rw_only = {"q": ParameterConstraints(sharding_types=[ShardingType.ROW_WISE.value])}
    with pytest.raises(ValueError, match=r"table 'q'.*row-wise needs a partition that follows contiguous ids"):
        make_planner(Topology(world_size=2, compute_device="cpu"), batch_size=8, constraints=rw_only).plan(
            model, get_sharders())
    plan = make_planner(Topology(world_size=2, compute_device="cpu"), batch_size=8).plan(model, get_sharders())
    assert plan.plan["qebc"]["q"].sharding_type != ShardingType.ROW_WISE.value


def _dynamic_model(max_capacity, initial_capacity=0, num_embeddings=1000):
    from torchrec_ext import DynamicEmbeddingBagCollection, DynamicEmbeddingBagConfig

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.dyn = DynamicEmbeddingBagCollection(
                [DynamicEmbeddingBagConfig(name="d", num_embeddings=num_embeddings, embedding_dim=64,
                                           feature_names=["f"], initial_capacity=initial_capacity,
                                           max_capacity=max_capacity)], device="meta")
    return M()


@pytest.mark.parametrize("sharding_type", [ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value,
                                           ShardingType.COLUMN_WISE.value])
def test_dynamic_table_is_charged_for_its_capacity(sharding_type):
    """rows x (dim x 4 bytes + row-wise Adagrad's 4 bytes) + 40 bytes of index per row per
    holder, for max_capacity rows (not the num_embeddings hint)."""
    rows = 2_000_000
    model = _dynamic_model(max_capacity=rows, num_embeddings=1000)
    sharders = get_sharders(fused_params={"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD})
    planner = make_planner(Topology(world_size=4, compute_device="cpu"), batch_size=64,
                           constraints={"d": ParameterConstraints(sharding_types=[sharding_type], min_partition=16)})
    options = [o for o in planner._enumerator.enumerate(model, sharders) if o.name == "d"]
    assert options
    for o in options:
        charged = sum(s.storage.ddr for s in o.shards)
        holders = len(o.shards) if sharding_type == ShardingType.COLUMN_WISE.value else 1
        expected = rows * (64 * 4 + 4) + holders * rows * 40
        assert abs(charged - expected) / expected < 0.05, (sharding_type, charged, expected)


def test_dynamic_table_is_charged_for_the_hint_without_max_capacity():
    model = _dynamic_model(max_capacity=None, initial_capacity=300_000, num_embeddings=100_000)
    planner = make_planner(Topology(world_size=2, compute_device="cpu"), batch_size=64,
                           constraints={"d": ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value])})
    (option,) = [o for o in planner._enumerator.enumerate(model, get_sharders()) if o.name == "d"]
    expected = 300_000 * (64 * 4 + 40)
    assert abs(option.shards[0].storage.ddr - expected) / expected < 0.05


def test_dynamic_tables_are_not_data_parallel():
    model = _dynamic_model(max_capacity=1000)
    planner = make_planner(Topology(world_size=2, compute_device="cpu"), batch_size=64,
                           constraints={"d": ParameterConstraints(sharding_types=[ShardingType.DATA_PARALLEL.value])})
    with pytest.raises(Exception, match=r"No available sharding type .* for d\. Module: .*DynamicEmbeddingBagCollection"):
        planner._enumerator.enumerate(model, get_sharders())


def test_planned_bytes_counts_state_pieces_and_refuses_dynamic_tables():
    """What the examples report: a hashed table's buffer under its plan, not num_embeddings x dim."""
    from torchrec_ext.sharding import planned_bytes

    model = Model(hashed_rows=100_000, compression=0.01)
    plan = make_planner(Topology(world_size=2, compute_device="cpu"), batch_size=64).plan(model, get_sharders())
    cfg = model.hebc.embedding_bag_configs()[0]
    assert planned_bytes(cfg, plan.plan["hebc"][cfg.name], 2) == cfg.buffer_rows * cfg.embedding_dim * 4
    dyn = _dynamic_model(max_capacity=1000).dyn.embedding_bag_configs()[0]
    with pytest.raises(ValueError, match=r"table 'd': a dynamic table holds the rows it creates"):
        planned_bytes(dyn, None, 2)
