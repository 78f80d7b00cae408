"""The input fuzz on a sharded model, for the spawned gloo worlds (see dist_harness.py).

Hashed, QR and dynamic collections, sharded row-wise by torchrec_ext's planner, against
their unsharded copy. Every rank draws the same Hypothesis batches (derandomized, no
shrinking, so the ranks stay in step): a valid batch gives each rank the unsharded
model's output for it; an invalid one raises a ValueError naming a table or feature on
every rank, in input_dist, before any collective (so no rank waits on another), and the
valid batches after it still match the reference (nothing was stored). An empty batch is
one of the invalid ones here: TorchRec's row-wise MEAN pooling divides per sample.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from fuzz_inputs import batches, problems
from hypothesis import HealthCheck, Phase, given, settings
from torch import nn
from torchrec import PoolingType
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv, ShardingType

from torchrec_ext import (
    DynamicEmbeddingBagCollection,
    DynamicEmbeddingBagConfig,
    HashedEmbeddingBagCollection,
    HashedEmbeddingBagConfig,
    QREmbeddingBagCollection,
    QREmbeddingBagConfig,
)
from torchrec_ext.sharding import get_sharders, make_planner

EXAMPLES = 40
FEATURES = ["a", "b", "shared"]
ID_BOUND = 600  # the smallest num_embeddings of the hashed and QR tables


class OurTables(nn.Module):
    def __init__(self):
        super().__init__()
        self.hashed = HashedEmbeddingBagCollection([
            HashedEmbeddingBagConfig(name="h", num_embeddings=800, embedding_dim=8, feature_names=["a", "shared"],
                                     compression=0.1, row_regions=4)])
        self.qr = QREmbeddingBagCollection([
            QREmbeddingBagConfig(name="q", num_embeddings=600, embedding_dim=8, feature_names=["b", "shared"],
                                 num_collisions=30, pooling=PoolingType.MEAN)])
        self.dyn = DynamicEmbeddingBagCollection([
            DynamicEmbeddingBagConfig(name="d", num_embeddings=100, embedding_dim=4, feature_names=["a", "b"],
                                      block_size=8)])

    def forward(self, kjt):
        parts = []
        for kt in (self.hashed(kjt), self.qr(kjt), self.dyn(kjt)):
            d = kt.to_dict()
            parts += [d[k] for k in sorted(d)]
        return torch.cat(parts, dim=1)


def _shard(model, world_size):
    tables = ["h", "q", "d"]
    constraints = {t: ParameterConstraints(sharding_types=[ShardingType.ROW_WISE.value], min_partition=4)
                   for t in tables}
    sharders = get_sharders(fused_params={"optimizer": "exact_sgd", "learning_rate": 0.1})
    planner = make_planner(Topology(world_size=world_size, compute_device="cpu"), batch_size=4,
                           constraints=constraints)
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    for module_plan in plan.plan.values():
        for name, ps in module_plan.items():
            assert ps.sharding_type == ShardingType.ROW_WISE.value, (name, ps.sharding_type)
    return DistributedModelParallel(model, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), plan=plan,
                                    sharders=sharders, device=torch.device("cpu"))


def sharded_fuzz(rank, world_size, **_):
    torch.manual_seed(0)
    ref = OurTables()
    dmp = _shard(copy.deepcopy(ref), world_size)
    dmp.load_state_dict(ref.state_dict())
    outcomes = {"valid": 0, "rejected": 0}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(batches(FEATURES, ID_BOUND))
    def run(batch):
        if batch.meta:  # a meta KJT goes through TorchRec's own meta path, not ours
            return
        expect = problems(batch, FEATURES, ID_BOUND, False)
        if batch.batch_size == 0:  # table q pools by MEAN row-wise
            expect.append("empty batch")
        try:
            out = dmp(batch.kjt())
        except (ValueError, TypeError) as e:
            assert expect, f"valid batch rejected: {e}\n{batch}"
            assert any(f"'{n}'" in str(e) for n in ["h", "q", "d"] + FEATURES), f"error names no table: {e}"
            outcomes["rejected"] += 1
            return
        assert not expect, f"batch breaking {expect} was accepted\n{batch}"
        want = ref(batch.kjt())
        torch.testing.assert_close(out.detach(), want.detach(), rtol=1e-5, atol=1e-5)
        outcomes["valid"] += 1

    run()
    assert outcomes["valid"] >= 5 and outcomes["rejected"] >= 5, outcomes
