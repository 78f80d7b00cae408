"""Dynamic-table scenarios for the spawned gloo worlds (see dist_harness.py).

A model with a standard EBC, hashed, QR and dynamic collections is planned by
torchrec_ext's planner and sharded table-wise, row-wise (by key hash) or column-wise; it
must equal the unsharded model: outputs, the keys each table inserted and their values
after one fused SGD step (the reference trains on the global batch with the loss divided
by the world size, TorchRec's convention). Checkpoints move 2 ranks -> 4 ranks and -> 1.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv, ShardingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext import (
    DynamicEmbeddingBagCollection,
    DynamicEmbeddingBagConfig,
    HashedEmbeddingBagCollection,
    HashedEmbeddingBagConfig,
    QREmbeddingBagCollection,
    QREmbeddingBagConfig,
)
from torchrec_ext.admission import FrequencyAdmission, ProbabilisticAdmission
from torchrec_ext.eviction import TTLEviction
from torchrec_ext.initializers import Normal
from torchrec_ext.modules.dynamic_rows import KeyedRows
from torchrec_ext.sharding import DynamicEmbeddingBagCollectionSharder, get_sharders, make_planner

PER_RANK_BATCH = 4
LR = 0.1
FUSED = {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR}
DYNAMIC_TABLES = ["d_users", "d_items", "d_ctx"]
TABLES = ["std0", "h_elem", "q_mult"] + DYNAMIC_TABLES
FEATURES = ["f_std", "f_a", "f_q", "f_u", "f_i", "f_shared", "f_c"]
OUT_DIM = 16 * 5 + 8 * 3


DYNAMIC_OPTIMIZERS = {"sgd": EmbOptimType.EXACT_SGD, "adam": EmbOptimType.ADAM,
                      "adagrad": EmbOptimType.EXACT_ADAGRAD, "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD}


def dynamic_fused(optimizer: str):
    return {"optimizer": DYNAMIC_OPTIMIZERS[optimizer], "learning_rate": LR}


class WithDynamic(nn.Module):
    """lifecycle: d_users admits an id at its second sighting and drops rows unseen for
    two steps; d_items always admits with probability 0.6 per sighting (by id, seed, step).
    d_ctx pools by SUM like d_users, so the two share a lookup kernel and batch in one
    native call (with another dim and block size, and gradients averaged per id)."""

    def __init__(self, optimizer: str = "sgd", lifecycle: bool = False):
        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
            name="std0", num_embeddings=120, embedding_dim=16, feature_names=["f_std"])])
        self.hashed = HashedEmbeddingBagCollection(tables=[HashedEmbeddingBagConfig(
            name="h_elem", num_embeddings=1000, embedding_dim=16, feature_names=["f_a"], mode="element", compression=0.05,
            row_regions=4, seed=1)])
        self.qr = QREmbeddingBagCollection(tables=[QREmbeddingBagConfig(
            name="q_mult", num_embeddings=3000, embedding_dim=16, feature_names=["f_q"], num_collisions=50)])
        self.dyn = DynamicEmbeddingBagCollection(
            tables=[
                DynamicEmbeddingBagConfig(
                    name="d_users", num_embeddings=500, embedding_dim=16, feature_names=["f_u", "f_shared"],
                    block_size=8, admission=FrequencyAdmission(2) if lifecycle else None,
                    eviction=TTLEviction(2) if lifecycle else None, eviction_interval=1 if lifecycle else 0),
                DynamicEmbeddingBagConfig(
                    name="d_items", num_embeddings=500, embedding_dim=8, feature_names=["f_i", "f_shared"],
                    pooling=PoolingType.MEAN, block_size=4, initializer=Normal(0.0, 0.1), key_buckets=16,
                    admission=ProbabilisticAdmission(0.6, seed=3)),
                DynamicEmbeddingBagConfig(
                    name="d_ctx", num_embeddings=500, embedding_dim=8, feature_names=["f_c"], block_size=4,
                    grad_reduce_by="id"),
            ],
            fused_params=dynamic_fused(optimizer),
        )

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        parts = []
        for kt in (self.ebc(kjt), self.hashed(kjt), self.qr(kjt), self.dyn(kjt)):
            d = kt.to_dict()
            parts += [d[k] for k in sorted(d)]
        return torch.cat(parts, dim=1)


def global_kjt(world_size: int, seed: int):
    """Ids anywhere in int64 for the dynamic features (repeats included), small ids else."""
    g = torch.Generator().manual_seed(seed)
    n = world_size * PER_RANK_BATCH
    lengths = {f: torch.randint(0, 4, (n,), generator=g) for f in FEATURES}
    pool = torch.randint(-(2**62), 2**62, (30,), generator=g)
    ids = {}
    for f in FEATURES:
        k = int(lengths[f].sum())
        if f == "f_std":
            ids[f] = torch.randint(0, 120, (k,), generator=g)
        elif f == "f_a":
            ids[f] = torch.randint(0, 1000, (k,), generator=g)
        elif f == "f_q":
            ids[f] = torch.randint(0, 3000, (k,), generator=g)
        else:
            ids[f] = pool[torch.randint(0, 30, (k,), generator=g)]
    return lengths, ids


def kjt_for(batch, lo: int, hi: int) -> KeyedJaggedTensor:
    lengths, ids = batch
    vals, lens = [], []
    for f in FEATURES:
        offs = torch.cat([torch.zeros(1, dtype=torch.long), lengths[f].cumsum(0)])
        vals.append(ids[f][offs[lo]:offs[hi]])
        lens.append(lengths[f][lo:hi])
    return KeyedJaggedTensor.from_lengths_sync(keys=FEATURES, values=torch.cat(vals), lengths=torch.cat(lens))


def shard(model, world_size, sharding_type, optimizer: str = "sgd"):
    constraints = {name: ParameterConstraints(sharding_types=[sharding_type], min_partition=4) for name in TABLES}
    # standard, hashed and QR tables train with SGD; the dynamic collection with `optimizer`
    sharders = [DynamicEmbeddingBagCollectionSharder(fused_params=dynamic_fused(optimizer))
                if isinstance(s, DynamicEmbeddingBagCollectionSharder) else s
                for s in get_sharders(fused_params=FUSED)]
    planner = make_planner(Topology(world_size=world_size, compute_device="cpu"), batch_size=PER_RANK_BATCH,
                           constraints=constraints)
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    for module_plan in plan.plan.values():
        for name, ps in module_plan.items():
            assert ps.sharding_type == sharding_type, (name, ps.sharding_type)
    return DistributedModelParallel(model, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), plan=plan,
                                    sharders=sharders, device=torch.device("cpu"))


def step(model, kjt, grad_out, divide_by: int):
    out = model(kjt)
    ((out * grad_out).sum() / divide_by).backward()
    with torch.no_grad():  # dense parameters (the dynamic tables updated themselves)
        for p in model.parameters():
            if p.grad is not None:
                p -= LR * p.grad
                p.grad = None
    return out.detach()


def gathered_dynamic_state(dmp):
    """Every rank's dynamic entries, merged (column-wise holders write identical copies)."""
    local = {k: v for k, v in dmp.state_dict().items() if isinstance(v, KeyedRows)}
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, local)
    merged = {}
    for entries in per_rank:
        for k, v in entries.items():
            if k in merged:
                assert torch.equal(merged[k].keys, v.keys) and torch.equal(merged[k].values, v.values), k
            merged[k] = v
    return merged


def assert_same_rows(state, ref_state):
    """Same keys, values, optimizer state and metadata in every bucket."""
    ref = {k: v for k, v in ref_state.items() if isinstance(v, KeyedRows)}
    state = {k: v for k, v in state.items() if isinstance(v, KeyedRows)}
    assert sorted(state) == sorted(ref), (sorted(set(state) ^ set(ref)))[:5]
    for k, v in ref.items():
        assert torch.equal(state[k].keys, v.keys), k
        torch.testing.assert_close(state[k].values, v.values, atol=1e-6, rtol=1e-6, msg=lambda m: f"{k}: {m}")
        assert sorted(state[k].optimizer) == sorted(v.optimizer), k
        for name, t in v.optimizer.items():
            torch.testing.assert_close(state[k].optimizer[name], t, atol=1e-6, rtol=1e-5,
                                       msg=lambda m: f"{k} {name}: {m}")
        for name, t in v.metadata.items():
            assert torch.equal(state[k].metadata[name], t), (k, name)


def assert_dense_match(sd, ref_sd):
    from dist_scenarios import local_pieces

    for key, ref_value in ref_sd.items():
        if isinstance(ref_value, KeyedRows):
            continue
        if key.endswith(".step"):  # a dynamic table's step counter, on the ranks holding it
            assert key not in sd or int(sd[key]) == int(ref_value), key
            continue
        for t, r, c in local_pieces(sd[key]):
            torch.testing.assert_close(t, ref_value[r:r + t.shape[0], c:c + t.shape[1]], atol=1e-5, rtol=1e-5)


def assert_key_placement(sharded, ref, sharding_type):
    """Sharded and unsharded dynamic collections hold the same keys. Row-wise: every key on
    exactly one rank; else every holder holds every key."""
    for name in DYNAMIC_TABLES:
        mine = sharded.keys(name)
        assert sharded.table_size(name) == mine.numel()
        per_rank = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, mine.tolist())
        expected = set(ref.keys(name).tolist())
        if sharding_type == ShardingType.ROW_WISE.value:
            assert sum(len(k) for k in per_rank) == len(expected), name
            assert set().union(*map(set, per_rank)) == expected, name
            assert all(len(k) > 0 for k in per_rank), name  # hashing spread the keys
        else:
            assert all(set(k) in (set(), expected) for k in per_rank), name
            assert any(per_rank), name


def check_lifecycle_api(sharded, ref, sharding_type):
    """Per-rank stats, incremental export and on-demand eviction add up to the unsharded ones."""
    world = dist.get_world_size()
    for name in DYNAMIC_TABLES:
        per_rank = [None] * world
        dist.all_gather_object(per_rank, sharded.stats(name))
        holders = [s for s in per_rank if s]
        total = sum(s["size"] for s in holders) if sharding_type == ShardingType.ROW_WISE.value else holders[0]["size"]
        assert total == ref.stats(name)["size"], (name, per_rank)
    deltas = [None] * world
    dist.all_gather_object(deltas, sharded.export_delta(2))
    expected = ref.export_delta(2)
    for name in DYNAMIC_TABLES:
        parts = [d[name] for d in deltas if name in d]
        keys = torch.cat([p.keys for p in parts])
        values = torch.cat([p.values for p in parts])
        order = torch.argsort(keys)
        if sharding_type != ShardingType.ROW_WISE.value:
            keys, values, order = parts[0].keys, parts[0].values, torch.argsort(parts[0].keys)
        assert torch.equal(keys[order], expected[name].keys), name
        torch.testing.assert_close(values[order], expected[name].values, atol=1e-6, rtol=1e-6)
    sharded.evict(), ref.evict()
    assert_key_placement(sharded, ref, sharding_type)


def equivalence(rank, world_size, sharding_type, optimizer="sgd", lifecycle=False):
    torch.manual_seed(0)
    ref, model = WithDynamic(optimizer, lifecycle), WithDynamic(optimizer, lifecycle)
    model.load_state_dict(ref.state_dict())
    dmp = shard(model, world_size, sharding_type, optimizer)
    dmp.load_state_dict(ref.state_dict())
    lo, hi = rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH
    n = world_size * PER_RANK_BATCH
    for seed in (1, 2, 3, 4):  # later steps read rows earlier ones created, updated, evicted
        batch = global_kjt(world_size, seed)
        grad_out = torch.randn(n, OUT_DIM, generator=torch.Generator().manual_seed(seed + 10))
        out = step(dmp, kjt_for(batch, lo, hi), grad_out[lo:hi], 1)
        ref_out = step(ref, kjt_for(batch, 0, n), grad_out, world_size)
        torch.testing.assert_close(out, ref_out[lo:hi], atol=1e-5, rtol=1e-5)
    assert_same_rows(gathered_dynamic_state(dmp), ref.state_dict())
    assert_dense_match(dmp.state_dict(), ref.state_dict())
    assert_key_placement(dmp.module.dyn, ref.dyn, sharding_type)
    if lifecycle:
        check_lifecycle_api(dmp.module.dyn, ref.dyn, sharding_type)
    # the dynamic tables' optimizers join DMP's fused optimizer, the TorchRec way
    names = [None] * world_size
    dist.all_gather_object(names, sorted(dmp.fused_optimizer.params))
    for table in DYNAMIC_TABLES:
        assert any(f"dyn.embedding_bags.{table}.rows" in k for per_rank in names for k in per_rank), (table, names)
    # eval: nothing inserted, unseen ids read as zeros, same outputs as unsharded
    dmp.eval(), ref.eval()
    batch = global_kjt(world_size, 7)
    sizes = [dmp.module.dyn.table_size(t) for t in DYNAMIC_TABLES]
    torch.testing.assert_close(dmp(kjt_for(batch, lo, hi)), ref(kjt_for(batch, 0, n))[lo:hi], atol=1e-5, rtol=1e-5)
    assert sizes == [dmp.module.dyn.table_size(t) for t in DYNAMIC_TABLES]


def dyn_tw(rank, world_size, **_):
    equivalence(rank, world_size, ShardingType.TABLE_WISE.value)


def dyn_rw(rank, world_size, **_):
    equivalence(rank, world_size, ShardingType.ROW_WISE.value)


def dyn_cw(rank, world_size, **_):
    equivalence(rank, world_size, ShardingType.COLUMN_WISE.value)


def dyn_rw_adam_lifecycle(rank, world_size, **_):
    equivalence(rank, world_size, ShardingType.ROW_WISE.value, "adam", lifecycle=True)


def dyn_tw_rowwise_adagrad(rank, world_size, **_):
    equivalence(rank, world_size, ShardingType.TABLE_WISE.value, "rowwise_adagrad")


def dyn_rw_adagrad(rank, world_size, **_):
    equivalence(rank, world_size, ShardingType.ROW_WISE.value, "adagrad", lifecycle=True)


DYNAMIC_EQUIVALENCE = ["dyn_tw", "dyn_rw", "dyn_cw", "dyn_rw_adam_lifecycle", "dyn_tw_rowwise_adagrad",
                       "dyn_rw_adagrad"]


SAVE_STEPS = 3


def _trained(world_size):
    """The unsharded model after SAVE_STEPS steps on global batches (the same on every rank)."""
    torch.manual_seed(0)
    ref = WithDynamic("adam", lifecycle=True)
    n = world_size * PER_RANK_BATCH
    for s in range(SAVE_STEPS):
        grad_out = torch.randn(n, OUT_DIM, generator=torch.Generator().manual_seed(11 + s))
        step(ref, kjt_for(global_kjt(world_size, 1 + s), 0, n), grad_out, world_size)
    return ref


def dyn_checkpoint_save(rank, world_size, ckpt_dir, **_):
    """Train SAVE_STEPS steps row-wise on 2 ranks (Adam, admission, TTL eviction) and save with
    DCP; rank 0 also saves the unsharded model's state after the same steps."""
    import torch.distributed.checkpoint as dcp

    path = os.path.join(ckpt_dir, "dynamic")
    torch.manual_seed(0)
    ref0 = WithDynamic("adam", lifecycle=True)
    dmp = shard(WithDynamic("adam", lifecycle=True), world_size, ShardingType.ROW_WISE.value, "adam")
    dmp.load_state_dict(ref0.state_dict())
    expected = _trained(world_size)
    lo, hi = rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH
    n = world_size * PER_RANK_BATCH
    for s in range(SAVE_STEPS):
        grad_out = torch.randn(n, OUT_DIM, generator=torch.Generator().manual_seed(11 + s))
        step(dmp, kjt_for(global_kjt(world_size, 1 + s), lo, hi), grad_out[lo:hi], 1)
    assert_same_rows(gathered_dynamic_state(dmp), expected.state_dict())
    dcp.save(dmp.state_dict(), checkpoint_id=path)
    if rank == 0:
        torch.save(expected.state_dict(), os.path.join(path, "expected.pt"))


def continue_after_load(dmp, ref, world_size, rank, steps=3):
    """Steps the loaded sharded model and the unsharded reference alike: outputs must agree."""
    lo, hi = rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH
    n = world_size * PER_RANK_BATCH
    for s in range(steps):
        batch = global_kjt(world_size, 20 + s)
        grad_out = torch.randn(n, OUT_DIM, generator=torch.Generator().manual_seed(30 + s))
        out = step(dmp, kjt_for(batch, lo, hi), grad_out[lo:hi], 1)
        ref_out = step(ref, kjt_for(batch, 0, n), grad_out, world_size)
        torch.testing.assert_close(out, ref_out[lo:hi], atol=1e-5, rtol=1e-5)


def dyn_checkpoint_load(rank, world_size, ckpt_dir, **_):
    """Load the 2-rank row-wise checkpoint on this world, row-wise and column-wise: the same
    keys, values, optimizer state and metadata, and the same outputs and rows over further
    steps as the unsharded model continuing from the same state."""
    import torch.distributed.checkpoint as dcp

    path = os.path.join(ckpt_dir, "dynamic")
    expected = torch.load(os.path.join(path, "expected.pt"), weights_only=False)
    for sharding_type in (ShardingType.ROW_WISE.value, ShardingType.COLUMN_WISE.value):
        torch.manual_seed(123)  # other initial weights: everything must come from the checkpoint
        dmp = shard(WithDynamic("adam", lifecycle=True), world_size, sharding_type, "adam")
        state = dmp.state_dict()
        dcp.load(state, checkpoint_id=path)
        dmp.load_state_dict(state)
        assert_same_rows(gathered_dynamic_state(dmp), expected)
        ref = WithDynamic("adam", lifecycle=True)
        ref.load_state_dict(expected)
        assert_key_placement(dmp.module.dyn, ref.dyn, sharding_type)
        continue_after_load(dmp, ref, world_size, rank)
        assert_same_rows(gathered_dynamic_state(dmp), ref.state_dict())
