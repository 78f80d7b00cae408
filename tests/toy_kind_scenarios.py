"""Multi-process scenario of tests/test_toy_kind.py: the planner and DMP shard a table kind
registered outside torchrec_ext (table-wise) next to a standard TorchRec table, and the
sharded model computes the unsharded function before and after a fused SGD step."""

from __future__ import annotations

import torch
import torch.distributed as dist
from dist_scenarios import PER_RANK_BATCH, global_batch, kjt_for
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv
from toy_kind import ExtEmbeddingBagCollection, ScaledEmbeddingBagConfig, coordinate_values, reference_pool

from torchrec_ext.sharding import get_sharders, make_planner

ROWS, DIM, SCALE, LR = 60, 8, 3.0, 0.5


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.std = EmbeddingBagCollection([EmbeddingBagConfig(name="std", num_embeddings=20, embedding_dim=DIM,
                                                              feature_names=["g"])])
        self.toy = ExtEmbeddingBagCollection([ScaledEmbeddingBagConfig(
            name="toy", num_embeddings=ROWS, embedding_dim=DIM, feature_names=["f"], scale=SCALE)])

    def forward(self, kjt):
        # a torch op on TorchRec's lazy awaitables waits for them
        return torch.cat([self.std(kjt).values(), self.toy(kjt).values()], dim=1)


def toy_sharded_next_to_a_standard_table(rank, world_size, **_):
    torch.manual_seed(0)
    model = Model()
    sharders = get_sharders(fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": LR})
    constraints = {n: ParameterConstraints(sharding_types=["table_wise"]) for n in ("std", "toy")}
    planner = make_planner(Topology(world_size=world_size, compute_device="cpu"), batch_size=PER_RANK_BATCH,
                           constraints=constraints)
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    planned = {name: ps.sharding_type for module_plan in plan.plan.values() for name, ps in module_plan.items()}
    assert planned == {"std": "table_wise", "toy": "table_wise"}, planned
    dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), plan=plan,
                                   sharders=sharders, device=torch.device("cpu"))

    batch = global_batch(world_size, 7, False, {"f": ROWS, "g": 20})
    lengths, ids, _ = batch
    lo, hi = rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH
    offs = torch.cat([torch.zeros(1, dtype=torch.long), lengths["f"].cumsum(0)])
    my_ids, my_lengths = ids["f"][offs[lo]:offs[hi]], lengths["f"][lo:hi]

    w0 = coordinate_values(ROWS, DIM, 0, 0)
    toy_out = dmp(kjt_for(batch, lo, hi))[:, DIM:]
    torch.testing.assert_close(toy_out, reference_pool(w0, SCALE, my_ids, my_lengths))

    # one fused SGD step; TorchRec divides sharded gradients by the world size
    grad_out = torch.randn(world_size * PER_RANK_BATCH, DIM, generator=torch.Generator().manual_seed(3))
    toy_out.backward(grad_out[lo:hi])
    bag = torch.repeat_interleave(torch.arange(lengths["f"].numel()), lengths["f"])
    dense = torch.zeros(ROWS, DIM).index_add_(0, ids["f"], SCALE * grad_out[bag])
    w1 = w0 - LR * dense / world_size
    toy_after = dmp(kjt_for(batch, lo, hi))[:, DIM:]
    torch.testing.assert_close(toy_after, reference_pool(w1, SCALE, my_ids, my_lengths), atol=1e-5, rtol=1e-5)
