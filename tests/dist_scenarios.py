"""Scenarios run inside spawned gloo worlds (see dist_harness.py).

Each builds the same model twice: an unsharded reference and a DMP-sharded copy planned
by torchrec_ext's planner, loads the reference weights into the sharded copy, and checks
that outputs and weights after one fused-optimizer step agree. The reference trains on
the global batch with the loss divided by the world size (TorchRec's convention).
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv, ShardingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext import (
    HashedEmbeddingBagCollection,
    HashedEmbeddingBagConfig,
    QREmbeddingBagCollection,
    QREmbeddingBagConfig,
)
from torchrec_ext.sharding import get_sharders, make_planner

PER_RANK_BATCH = 4
LR = 0.1
FEATURES = {"f_std": 120, "f_a": 1000, "f_b": 5000, "f_shared": 1000, "f_q": 3000, "f_g": 1500, "f_c": 1100, "f_q2": 1000}
WEIGHTED_FEATURES = {"f_w": 300, "f_w2": 400}


class TwoCollections(nn.Module):
    """A standard TorchRec EBC next to hashed collections (element, block, weighted) and a
    QR collection (quotient-remainder x mult, generalized QR x concat, CRT x add)."""

    def __init__(self, device=None):
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name="std0", num_embeddings=120, embedding_dim=16, feature_names=["f_std"])],
            device=device,
        )
        self.hashed = HashedEmbeddingBagCollection(
            tables=[
                HashedEmbeddingBagConfig(name="h_elem", num_embeddings=1000, embedding_dim=16,
                                         feature_names=["f_a", "f_shared"], mode="element",
                                         signed=True, compression=0.05, row_regions=4, seed=1),
                HashedEmbeddingBagConfig(name="h_block", num_embeddings=5000, embedding_dim=16,
                                         feature_names=["f_b", "f_shared"], mode="block", chunk_size=4,
                                         signed=True, compression=0.1, row_regions=4, pooling=PoolingType.MEAN),
            ],
            device=device,
        )
        self.weighted = HashedEmbeddingBagCollection(
            tables=[HashedEmbeddingBagConfig(name="h_w", num_embeddings=300, embedding_dim=8,
                                             feature_names=["f_w"], compression=0.2, row_regions=4, chunk_size=4,
                                             block_align=1),  # blocks wrap into the next slot
                    HashedEmbeddingBagConfig(name="h_w2", num_embeddings=400, embedding_dim=8, mode="element",
                                             feature_names=["f_w2"], compression=0.1, row_regions=4, seed=7)],
            is_weighted=True,
            device=device,
        )
        self.qr = QREmbeddingBagCollection(
            tables=[
                QREmbeddingBagConfig(name="q_mult", num_embeddings=3000, embedding_dim=16,
                                     feature_names=["f_q", "f_shared"], num_collisions=50),
                QREmbeddingBagConfig(name="q_gen", num_embeddings=1500, embedding_dim=16, feature_names=["f_g"],
                                     partition="generalized_qr", factors=[10, 12, 15], operation="concat",
                                     partition_dims=[4, 4, 8], pooling=PoolingType.MEAN),
                QREmbeddingBagConfig(name="q_crt", num_embeddings=1100, embedding_dim=16, feature_names=["f_c"],
                                     partition="crt", factors=[31, 37], operation="add"),
                # a second row-wise SUM table: row-wise plans batch it with q_mult in one kernel.
                # Its own feature: TorchRec 1.8 row-wise divides the second table of a shared
                # feature by the bag lengths when the module has a MEAN table (its own EBC too).
                QREmbeddingBagConfig(name="q_add", num_embeddings=1000, embedding_dim=16,
                                     feature_names=["f_q2"], num_collisions=32, operation="add"),
            ],
            device=device,
        )

    def forward(self, kjt: KeyedJaggedTensor, wkjt: KeyedJaggedTensor) -> torch.Tensor:
        # By key, as DLRM reads it: a sharded KeyedTensor may order its keys by shard.
        parts = []
        for kt in (self.ebc(kjt), self.hashed(kjt), self.weighted(wkjt), self.qr(kjt)):
            d = kt.to_dict()
            parts += [d[k] for k in sorted(d)]
        return torch.cat(parts, dim=1)


def global_batch(world_size: int, seed: int, weighted: bool, features):
    g = torch.Generator().manual_seed(seed)
    n = world_size * PER_RANK_BATCH
    lengths = {f: torch.randint(0, 4, (n,), generator=g) for f in features}
    ids = {f: torch.randint(0, hi, (int(lengths[f].sum()),), generator=g) for f, hi in features.items()}
    weights = {f: torch.rand(ids[f].numel(), generator=g) + 0.5 for f in features} if weighted else None
    return lengths, ids, weights


def kjt_for(batch, lo: int, hi: int) -> KeyedJaggedTensor:
    lengths, ids, weights = batch
    keys, vals, lens, ws = list(lengths), [], [], []
    for f in keys:
        offs = torch.cat([torch.zeros(1, dtype=torch.long), lengths[f].cumsum(0)])
        vals.append(ids[f][offs[lo]:offs[hi]])
        lens.append(lengths[f][lo:hi])
        if weights is not None:
            ws.append(weights[f][offs[lo]:offs[hi]])
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.cat(vals), lengths=torch.cat(lens),
        weights=torch.cat(ws) if weights is not None else None,
    )


TABLES = ["std0", "h_elem", "h_block", "h_w", "h_w2", "q_mult", "q_gen", "q_crt", "q_add"]


def expected_type(table: str, sharding_type: str) -> str:
    """CRT tables have no row-wise plan (no partition follows contiguous ids): table-wise."""
    if table == "q_crt" and sharding_type == ShardingType.ROW_WISE.value:
        return ShardingType.TABLE_WISE.value
    return sharding_type


def replicated_keys(sharding_type: str) -> set:
    """State held whole by every rank: row-wise QR tables' small partitions."""
    if sharding_type != ShardingType.ROW_WISE.value:
        return set()
    return {"qr.embedding_bags.q_mult.weight_1", "qr.embedding_bags.q_gen.weight_0",
            "qr.embedding_bags.q_gen.weight_1", "qr.embedding_bags.q_add.weight_1"}


def shard_model(model, world_size, sharding_type, fused_params):
    constraints = {
        name: ParameterConstraints(sharding_types=[expected_type(name, sharding_type)], min_partition=4)
        for name in TABLES
    }
    sharders = get_sharders(fused_params=fused_params)
    planner = make_planner(Topology(world_size=world_size, compute_device="cpu"),
                           batch_size=PER_RANK_BATCH, constraints=constraints)
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    for module_plan in plan.plan.values():
        for name, ps in module_plan.items():
            assert ps.sharding_type == expected_type(name, sharding_type), (name, ps.sharding_type)
    return DistributedModelParallel(
        model, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), plan=plan,
        sharders=sharders, device=torch.device("cpu"),
    )


def reference_step(ref: nn.Module, kjt, wkjt, grad_out, world_size, optimizer):
    out = ref(kjt, wkjt)
    ((out * grad_out).sum() / world_size).backward()
    with torch.no_grad():
        for p in ref.parameters():
            g = p.grad
            if optimizer == "sgd":
                p -= LR * g
            else:  # FBGEMM row-wise Adagrad, from a zero state
                m = g.pow(2).mean(dim=1)
                p -= LR * g / (m.sqrt() + 1e-8).unsqueeze(1)
    return out


def local_pieces(value):
    """(tensor, row offset, col offset) for every piece of a state_dict value held here."""
    if isinstance(value, ShardedTensor):
        return [(s.tensor, *s.metadata.shard_offsets) for s in value.local_shards()]
    return [(value, 0, 0)]


def assert_state_matches(sharded_sd, ref_sd, expect_sharded: bool, full: set = frozenset()):
    """Every value matches the reference; sharded plans give ShardedTensors except `full` keys."""
    for key, ref_value in ref_sd.items():
        value = sharded_sd[key]
        if expect_sharded and key in full:
            assert not isinstance(value, ShardedTensor), f"{key} should be held whole by every rank"
        elif expect_sharded:
            assert isinstance(value, ShardedTensor), f"{key} is {type(value)}, not a ShardedTensor"
            assert list(value.size()) == list(ref_value.shape), (key, value.size(), ref_value.shape)
        for t, r, c in local_pieces(value):
            torch.testing.assert_close(t, ref_value[r:r + t.shape[0], c:c + t.shape[1]],
                                       atol=1e-5, rtol=1e-5, msg=lambda m: f"{key}: {m}")


def equivalence(rank, world_size, sharding_type, optimizer):
    torch.manual_seed(0)
    ref = TwoCollections()
    model = copy.deepcopy(ref)
    opt_type = EmbOptimType.EXACT_SGD if optimizer == "sgd" else EmbOptimType.EXACT_ROWWISE_ADAGRAD
    dmp = shard_model(model, world_size, sharding_type, {"optimizer": opt_type, "learning_rate": LR})
    dmp.load_state_dict(ref.state_dict())

    batch = global_batch(world_size, seed=1, weighted=False, features=FEATURES)
    wbatch = global_batch(world_size, seed=2, weighted=True, features=WEIGHTED_FEATURES)
    lo, hi = rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH
    n = world_size * PER_RANK_BATCH

    out = dmp(kjt_for(batch, lo, hi), kjt_for(wbatch, lo, hi))
    grad_out = torch.randn(n, out.shape[1], generator=torch.Generator().manual_seed(3))
    ref_out = reference_step(ref, kjt_for(batch, 0, n), kjt_for(wbatch, 0, n), grad_out, world_size, optimizer)
    torch.testing.assert_close(out, ref_out[lo:hi], atol=1e-5, rtol=1e-5)

    (out * grad_out[lo:hi]).sum().backward()
    if sharding_type == ShardingType.DATA_PARALLEL.value:  # DP tables train with a dense optimizer
        dense = [p for p in dmp.parameters() if p.grad is not None]
        assert dense, "data-parallel tables must receive dense gradients"
        torch.optim.SGD(dense, lr=LR).step()
    assert_state_matches(dmp.state_dict(), ref.state_dict(),
                         expect_sharded=sharding_type != ShardingType.DATA_PARALLEL.value,
                         full=replicated_keys(sharding_type))
    # the fused optimizer is exposed the TorchRec way
    if sharding_type != ShardingType.DATA_PARALLEL.value:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, sorted(dmp.fused_optimizer.params.keys()))
        keys = {k for per_rank in gathered for k in per_rank}
        for table in ["hashed.embedding_bags.h_elem", "hashed.embedding_bags.h_block", "ebc.embedding_bags.std0",
                      "qr.embedding_bags.q_mult.weight_0", "qr.embedding_bags.q_gen.weight_2"]:
            assert any(table in k for k in keys), (table, keys)

    # the sharded state, gathered, is the full table
    if sharding_type == ShardingType.ROW_WISE.value:
        ref_sd = ref.state_dict()
        for key in ["hashed.embedding_bags.h_block.weight", "qr.embedding_bags.q_mult.weight_0"]:
            st = dmp.state_dict()[key]
            full = torch.empty(st.size()) if rank == 0 else None
            st.gather(dst=0, out=full)
            if rank == 0:
                torch.testing.assert_close(full, ref_sd[key].detach(), atol=1e-5, rtol=1e-5)


# name -> (sharding type, optimizer); each becomes a scenario function of this module
_EQUIVALENCE_CASES = {
    "tw_sgd": (ShardingType.TABLE_WISE.value, "sgd"),
    "rw_sgd": (ShardingType.ROW_WISE.value, "sgd"),
    "cw_sgd": (ShardingType.COLUMN_WISE.value, "sgd"),
    "dp_sgd": (ShardingType.DATA_PARALLEL.value, "sgd"),
    "tw_rowwise_adagrad": (ShardingType.TABLE_WISE.value, "rowwise_adagrad"),
    "rw_rowwise_adagrad": (ShardingType.ROW_WISE.value, "rowwise_adagrad"),
}


def _equivalence_scenario(sharding_type, optimizer):
    def scenario(rank, world_size, **_):
        equivalence(rank, world_size, sharding_type, optimizer)
    return scenario


for _name, _case in _EQUIVALENCE_CASES.items():
    globals()[_name] = _equivalence_scenario(*_case)

EQUIVALENCE = list(_EQUIVALENCE_CASES)


def _trained_reference(world_size):
    """The unsharded model after one SGD step on the global batch (identical on every rank)."""
    torch.manual_seed(0)
    ref = TwoCollections()
    n = world_size * PER_RANK_BATCH
    batch = global_batch(world_size, seed=1, weighted=False, features=FEATURES)
    wbatch = global_batch(world_size, seed=2, weighted=True, features=WEIGHTED_FEATURES)
    out = ref(kjt_for(batch, 0, n), kjt_for(wbatch, 0, n))
    grad_out = torch.randn(n, out.shape[1], generator=torch.Generator().manual_seed(3))
    ref.zero_grad()
    reference_step(ref, kjt_for(batch, 0, n), kjt_for(wbatch, 0, n), grad_out, world_size, "sgd")
    return ref, batch, wbatch, grad_out


def checkpoint_save(rank, world_size, ckpt_dir, **_):
    """Train one step row-wise, save with DCP (and, on rank 0, the expected full state)."""
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    ref0 = TwoCollections()
    dmp = shard_model(copy.deepcopy(ref0), world_size, ShardingType.ROW_WISE.value,
                      {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR})
    dmp.load_state_dict(ref0.state_dict())
    expected, batch, wbatch, grad_out = _trained_reference(world_size)
    lo, hi = rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH
    (dmp(kjt_for(batch, lo, hi), kjt_for(wbatch, lo, hi)) * grad_out[lo:hi]).sum().backward()
    assert_state_matches(dmp.state_dict(), expected.state_dict(), expect_sharded=True,
                         full=replicated_keys(ShardingType.ROW_WISE.value))
    dcp.save(dmp.state_dict(), checkpoint_id=ckpt_dir)
    if rank == 0:
        torch.save({k: v.detach() for k, v in expected.state_dict().items()},
                   os.path.join(ckpt_dir, "expected.pt"))


def checkpoint_load(rank, world_size, ckpt_dir, **_):
    """Load the row-wise checkpoint under another plan and world size; outputs must agree."""
    import torch.distributed.checkpoint as dcp

    expected = torch.load(os.path.join(ckpt_dir, "expected.pt"))
    torch.manual_seed(123)  # different initial weights: everything must come from the checkpoint
    dmp = shard_model(TwoCollections(), world_size, ShardingType.COLUMN_WISE.value,
                      {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR})
    state = dmp.state_dict()
    dcp.load(state, checkpoint_id=ckpt_dir)
    assert_state_matches(dmp.state_dict(), expected, expect_sharded=True)
    ref = TwoCollections()
    ref.load_state_dict(expected)
    n = world_size * PER_RANK_BATCH
    batch = global_batch(world_size, seed=9, weighted=False, features=FEATURES)
    wbatch = global_batch(world_size, seed=10, weighted=True, features=WEIGHTED_FEATURES)
    lo, hi = rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH
    out = dmp(kjt_for(batch, lo, hi), kjt_for(wbatch, lo, hi))
    torch.testing.assert_close(out, ref(kjt_for(batch, 0, n), kjt_for(wbatch, 0, n))[lo:hi], atol=1e-5, rtol=1e-5)


def torn_checkpoint(rank, world_size, ckpt_dir, **_):
    """An atomic checkpoint saved by every rank, then one rank's shard file cut short: every
    rank's load raises CheckpointError naming that file (none hangs), and nothing loads."""
    from torchrec_ext.sharding import CheckpointError, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    dmp = shard_model(TwoCollections(), world_size, ShardingType.ROW_WISE.value,
                      {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR})
    root = os.path.join(ckpt_dir, f"atomic_w{world_size}")
    path = save_checkpoint(dmp.state_dict(), root, step=1)
    victim = f"__{world_size - 1}_0.distcp"
    if rank == 0:
        with open(os.path.join(path, victim), "r+b") as f:
            f.truncate(10)
    dist.barrier()
    torch.manual_seed(5)
    fresh = shard_model(TwoCollections(), world_size, ShardingType.ROW_WISE.value,
                        {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR})
    before = {k: v.clone() for k, v in local_pieces_of(fresh.state_dict()).items()}
    try:
        load_checkpoint(fresh.state_dict(), root)
    except CheckpointError as e:
        assert victim in str(e) and "truncated" in str(e), str(e)
    else:
        raise AssertionError("a truncated shard loaded")
    for k, v in local_pieces_of(fresh.state_dict()).items():
        assert torch.equal(v, before[k]), k


def local_pieces_of(state):
    return {f"{k}.{i}": p[0] for k, v in state.items() if torch.is_tensor(v) for i, p in enumerate(local_pieces(v))}


# Dynamic-table scenarios run in the same worlds (one spawn per world size).
import dist_dynamic_scenarios as _dynamic  # noqa: E402

DYNAMIC_EQUIVALENCE = _dynamic.DYNAMIC_EQUIVALENCE
for _name in DYNAMIC_EQUIVALENCE + ["dyn_checkpoint_save", "dyn_checkpoint_load"]:
    globals()[_name] = getattr(_dynamic, _name)

from dist_fuzz_scenarios import sharded_fuzz  # noqa: E402,F401  (the 2-rank world runs it)
