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
from torchrec_ext.initializers import Normal
from torchrec_ext.modules.dynamic_rows import KeyedRows
from torchrec_ext.sharding import get_sharders, make_planner

PER_RANK_BATCH = 4
LR = 0.1
FUSED = {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR}
DYNAMIC_TABLES = ["d_users", "d_items"]
TABLES = ["std0", "h_elem", "q_mult"] + DYNAMIC_TABLES
FEATURES = ["f_std", "f_a", "f_q", "f_u", "f_i", "f_shared"]
OUT_DIM = 16 * 5 + 8 * 2


class WithDynamic(nn.Module):
    def __init__(self):
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
                DynamicEmbeddingBagConfig(name="d_users", num_embeddings=500, embedding_dim=16,
                                          feature_names=["f_u", "f_shared"], block_size=8),
                DynamicEmbeddingBagConfig(name="d_items", num_embeddings=500, embedding_dim=8,
                                          feature_names=["f_i", "f_shared"], pooling=PoolingType.MEAN,
                                          block_size=4, initializer=Normal(0.0, 0.1), key_buckets=16),
            ],
            fused_params=FUSED,
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


def shard(model, world_size, sharding_type):
    constraints = {name: ParameterConstraints(sharding_types=[sharding_type], min_partition=4) for name in TABLES}
    sharders = get_sharders(fused_params=FUSED)
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
    ref = {k: v for k, v in ref_state.items() if isinstance(v, KeyedRows)}
    state = {k: v for k, v in state.items() if isinstance(v, KeyedRows)}
    assert sorted(state) == sorted(ref), (sorted(set(state) ^ set(ref)))[:5]
    for k, v in ref.items():
        assert torch.equal(state[k].keys, v.keys), k
        torch.testing.assert_close(state[k].values, v.values, atol=1e-6, rtol=1e-6, msg=lambda m: f"{k}: {m}")


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


def assert_key_placement(dmp, ref, sharding_type):
    """Row-wise: every key on exactly one rank; else every holder holds every key."""
    for name in DYNAMIC_TABLES:
        mine = dmp.module.dyn.keys(name)
        assert dmp.module.dyn.table_size(name) == mine.numel()
        per_rank = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, mine.tolist())
        expected = set(ref.dyn.keys(name).tolist())
        if sharding_type == ShardingType.ROW_WISE.value:
            assert sum(len(k) for k in per_rank) == len(expected), name
            assert set().union(*map(set, per_rank)) == expected, name
            assert all(len(k) > 0 for k in per_rank), name  # hashing spread the keys
        else:
            assert all(set(k) in (set(), expected) for k in per_rank), name
            assert any(per_rank), name


def equivalence(rank, world_size, sharding_type):
    torch.manual_seed(0)
    ref, model = WithDynamic(), WithDynamic()
    model.load_state_dict(ref.state_dict())
    dmp = shard(model, world_size, sharding_type)
    dmp.load_state_dict(ref.state_dict())
    lo, hi = rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH
    n = world_size * PER_RANK_BATCH
    for seed in (1, 2):  # two steps: the second reads rows the first created and updated
        batch = global_kjt(world_size, seed)
        grad_out = torch.randn(n, OUT_DIM, generator=torch.Generator().manual_seed(seed + 10))
        out = step(dmp, kjt_for(batch, lo, hi), grad_out[lo:hi], 1)
        ref_out = step(ref, kjt_for(batch, 0, n), grad_out, world_size)
        torch.testing.assert_close(out, ref_out[lo:hi], atol=1e-5, rtol=1e-5)
    assert_same_rows(gathered_dynamic_state(dmp), ref.state_dict())
    assert_dense_match(dmp.state_dict(), ref.state_dict())
    assert_key_placement(dmp, ref, sharding_type)
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


DYNAMIC_EQUIVALENCE = ["dyn_tw", "dyn_rw", "dyn_cw"]


def _trained(world_size):
    """The unsharded model after one step on the global batch (the same on every rank)."""
    torch.manual_seed(0)
    ref = WithDynamic()
    n = world_size * PER_RANK_BATCH
    grad_out = torch.randn(n, OUT_DIM, generator=torch.Generator().manual_seed(11))
    step(ref, kjt_for(global_kjt(world_size, 1), 0, n), grad_out, world_size)
    return ref, grad_out


def dyn_checkpoint_save(rank, world_size, ckpt_dir, **_):
    """Train one step row-wise on 2 ranks and save with DCP (rank 0 also saves the expected state)."""
    import torch.distributed.checkpoint as dcp

    path = os.path.join(ckpt_dir, "dynamic")
    torch.manual_seed(0)
    ref0 = WithDynamic()
    dmp = shard(WithDynamic(), world_size, ShardingType.ROW_WISE.value)
    dmp.load_state_dict(ref0.state_dict())
    expected, grad_out = _trained(world_size)
    lo, hi = rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH
    step(dmp, kjt_for(global_kjt(world_size, 1), lo, hi), grad_out[lo:hi], 1)
    assert_same_rows(gathered_dynamic_state(dmp), expected.state_dict())
    dcp.save(dmp.state_dict(), checkpoint_id=path)
    if rank == 0:
        torch.save(expected.state_dict(), os.path.join(path, "expected.pt"))


def dyn_checkpoint_load(rank, world_size, ckpt_dir, **_):
    """Load the 2-rank row-wise checkpoint on this world, row-wise and column-wise: the same
    keys and values, and the same outputs and rows after another step."""
    import torch.distributed.checkpoint as dcp

    path = os.path.join(ckpt_dir, "dynamic")
    expected = torch.load(os.path.join(path, "expected.pt"), weights_only=False)
    lo, hi = rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH
    n = world_size * PER_RANK_BATCH
    for sharding_type in (ShardingType.ROW_WISE.value, ShardingType.COLUMN_WISE.value):
        torch.manual_seed(123)  # other initial weights: everything must come from the checkpoint
        dmp = shard(WithDynamic(), world_size, sharding_type)
        state = dmp.state_dict()
        dcp.load(state, checkpoint_id=path)
        dmp.load_state_dict(state)
        assert_same_rows(gathered_dynamic_state(dmp), expected)
        ref = WithDynamic()
        ref.load_state_dict(expected)
        assert_key_placement(dmp, ref, sharding_type)
        batch = global_kjt(world_size, 5)
        grad_out = torch.randn(n, OUT_DIM, generator=torch.Generator().manual_seed(12))
        out = step(dmp, kjt_for(batch, lo, hi), grad_out[lo:hi], 1)
        ref_out = step(ref, kjt_for(batch, 0, n), grad_out, world_size)
        torch.testing.assert_close(out, ref_out[lo:hi], atol=1e-5, rtol=1e-5)
        assert_same_rows(gathered_dynamic_state(dmp), ref.state_dict())
