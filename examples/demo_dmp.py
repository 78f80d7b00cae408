"""Demo: a standard TorchRec EBC next to hashed, QR and dynamic tables, planned by
torchrec_ext's planner, sharded by DistributedModelParallel over N CPU processes (gloo),
trained a few steps.

Prints the plan, what each table costs in memory (planned vs a full table), the loss, and
how many rows the dynamic table created for its unbounded ids (spread over the ranks by
key hash).
The data is generated here (a planted click signal on power-law ids), so the demo needs
no download:  python examples/demo_dmp.py --world-size 2 --steps 30
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import Topology
from torchrec.distributed.types import ShardingEnv
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext import (
    DynamicEmbeddingBagCollection,
    DynamicEmbeddingBagConfig,
    HashedEmbeddingBagCollection,
    HashedEmbeddingBagConfig,
    QREmbeddingBagCollection,
    QREmbeddingBagConfig,
)
from torchrec_ext.admission import FrequencyAdmission
from torchrec_ext.eviction import LFUEviction
from torchrec_ext.sharding import get_sharders, make_planner, planned_bytes

STANDARD = {"country": 200, "device": 50}
HASHED = {"user_id": 2_000_000}
QR = {"item_id": 1_000_000}
DYNAMIC = {"query": 100_000}  # ids are 64-bit hashes of query strings: no vocabulary bound
VOCAB = {**STANDARD, **HASHED, **QR, **DYNAMIC}
KEYS = sorted(VOCAB)
DIM = 16


class DemoModel(nn.Module):
    def __init__(self, device=None):
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name=f"t_{f}", num_embeddings=n, embedding_dim=DIM, feature_names=[f])
                    for f, n in STANDARD.items()],
            device=device,
        )
        self.hashed = HashedEmbeddingBagCollection(
            tables=[HashedEmbeddingBagConfig(name=f"h_{f}", num_embeddings=n, embedding_dim=DIM, feature_names=[f],
                                             compression=0.01, mode="block")
                    for f, n in HASHED.items()],
            device=device,
        )
        self.qr = QREmbeddingBagCollection(
            tables=[QREmbeddingBagConfig(name=f"q_{f}", num_embeddings=n, embedding_dim=DIM, feature_names=[f],
                                         num_collisions=1000, operation="mult")
                    for f, n in QR.items()],
            device=device,
        )
        self.dynamic = DynamicEmbeddingBagCollection(
            # a row once an id has been seen twice; at most 4096 rows, least frequent out first
            tables=[DynamicEmbeddingBagConfig(name=f"d_{f}", num_embeddings=n, embedding_dim=DIM, feature_names=[f],
                                              admission=FrequencyAdmission(2), max_capacity=4096,
                                              eviction=LFUEviction())
                    for f, n in DYNAMIC.items()],
            device=device,
        )
        self.mlp = nn.Sequential(nn.Linear(DIM * len(KEYS), 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        pooled = {}
        for collection in (self.ebc, self.hashed, self.qr, self.dynamic):
            pooled.update(collection(kjt).to_dict())
        return self.mlp(torch.cat([pooled[k] for k in KEYS], dim=1)).squeeze(1)


def make_batch(step: int, rank: int, batch_size: int):
    """One id per feature per sample; the label depends on a hidden score of the ids."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    values, lengths = [], []
    score = torch.zeros(batch_size)
    for f in KEYS:
        n = VOCAB[f]
        # power-law ids: small ids are frequent
        ids = (torch.rand(batch_size, generator=g).pow(3.0) * n).long().clamp_(max=n - 1)
        score += torch.sin(ids.float() * 0.37 + len(f))
        if f in DYNAMIC:  # the raw id a hashing tokenizer would give: anywhere in int64
            ids = ids * 0x9E3779B97F4A7C1 - 2**62
        values.append(ids)
        lengths.append(torch.ones(batch_size, dtype=torch.long))
    labels = (score > 0).float()
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=KEYS,
                                              values=torch.cat(values), lengths=torch.cat(lengths))
    return kjt, labels


def worker(rank: int, world_size: int, port: int, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=300))
    train(rank, world_size, args)
    # the sharded modules (in reference cycles) hold the process group: free them before
    # destroying it, not at interpreter shutdown, where gloo's teardown can abort
    gc.collect()
    dist.destroy_process_group()


def train(rank: int, world_size: int, args) -> None:
    torch.manual_seed(0)
    model = DemoModel(device=torch.device("meta"))
    sharders = get_sharders(fused_params={"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.05})
    planner = make_planner(Topology(world_size=world_size, compute_device="cpu"), batch_size=args.batch_size)
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
                                   plan=plan, sharders=sharders, device=torch.device("cpu"))
    if rank == 0:
        print(plan, flush=True)
        print("\nper-table memory (parameter bytes held across all ranks):")
        print(f"{'table':<12}{'kind':<10}{'planned':>14}{'full table':>14}{'saving':>9}")
        for module in ("ebc", "hashed", "qr"):  # dynamic tables: rows created, after training
            for cfg in getattr(dmp.module, module)._embedding_bag_configs:
                held = planned_bytes(cfg, plan.plan[module][cfg.name], world_size)
                full = cfg.num_embeddings * cfg.embedding_dim * 4
                kind = "standard" if module == "ebc" else module
                print(f"{cfg.name:<12}{kind:<10}{held:>14,}{full:>14,}{full / held:>8.0f}x")
    dense_opt = torch.optim.Adam([p for n, p in dmp.named_parameters() if "mlp" in n], lr=0.01)
    loss_fn = nn.BCEWithLogitsLoss()
    for step in range(args.steps):
        kjt, labels = make_batch(step, rank, args.batch_size)
        dense_opt.zero_grad()
        loss = loss_fn(dmp(kjt), labels)
        loss.backward()  # embedding tables update here (fused optimizer)
        dense_opt.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)
    for cfg in dmp.module.dynamic.embedding_bag_configs():
        per_rank = [None] * world_size
        dist.all_gather_object(per_rank, dmp.module.dynamic.stats(cfg.name))
        if rank == 0:
            print(f"\ndynamic table {cfg.name} ({plan.plan['dynamic'][cfg.name].sharding_type}), per rank:")
            for r, st in enumerate(per_rank):
                print(f"  rank {r}: " + ", ".join(f"{k} {st[k]:,.2f}" if k == "load" else f"{k} {st[k]:,}"
                                                  for k in ("size", "capacity", "admitted", "rejected",
                                                            "evicted", "load")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(args.world_size, port, args), nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()
