"""The main job: TorchRec's DLRM with standard or torchrec_ext tables, planned by the
project's planner, sharded by DistributedModelParallel over N CPU processes (gloo), trained
with TorchRec's TrainPipelineSparseDist, and compared for quality, memory and speed.

Per feature, a table is standard (small vocabularies, or the "full" variant) or one of the
variants (vocabularies of at least --large ids): hashed (block mode), QR (mult), dynamic
(raw 64-bit ids, a row per id seen), or mixed (the large tables take the three kinds in turn). Each variant trains in its own world of processes;
then a table of embedding memory, throughput, test AUC and log loss, and a plot of AUC vs
memory, are written to --out.

    python examples/dlrm_main.py                                  # generated Criteo-layout data
    python examples/dlrm_main.py --variants full,qr --steps 50 --world-size 4
    python examples/dlrm_main.py --data day_0.tsv --test-data day_1.tsv   # real Criteo TSV
    python examples/dlrm_main.py --variants dynamic --steps 100 --save ckpt/ --save-every 20
    python examples/dlrm_main.py --variants dynamic --steps 200 --resume ckpt/ --world-size 3

`--save` checkpoints atomically (ckpt/step_<N>, every --save-every steps and at the end);
`--resume` takes a checkpoint or such a folder, whose newest complete checkpoint it loads,
so a job killed at any moment restarts where its last checkpoint left it.
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import gc
import json
import os
import signal
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchrec.models.dlrm import SparseArch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quiet import quiet_known_warnings  # noqa: E402

VARIANTS = ("full", "hashed", "qr", "dynamic")  # the default run
ACCEPTED = (*VARIANTS, "mixed")
MIXED_KINDS = ("hashed", "qr", "dynamic")  # the "mixed" variant's large tables, in turn


def table_kinds(variant: str, args):
    """Per feature: "full" (a standard table) or the kind of table it gets."""
    from criteo_data import VOCAB

    kinds, large = [], 0
    for n in VOCAB:
        if variant == "full" or n < args.large:
            kinds.append("full")
        elif variant == "mixed":
            kinds.append(MIXED_KINDS[large % len(MIXED_KINDS)])
            large += 1
        else:
            kinds.append(variant)
    return kinds


def build_model(variant: str, args):
    """DLRM whose sparse arch holds a standard EBC (small tables) and a collection of the
    variant (large tables); on the meta device until DMP shards it."""
    from criteo_data import CATEGORICAL, DENSE, VOCAB
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.models.dlrm import DLRM, DLRMTrain

    import torchrec_ext as trx

    meta = torch.device("meta")
    configs = {k: [] for k in ("full", *MIXED_KINDS)}
    for f, n, kind in zip(CATEGORICAL, VOCAB, table_kinds(variant, args)):
        common = dict(name=f"t_{f}", num_embeddings=n, embedding_dim=args.dim, feature_names=[f])
        if kind == "full":
            configs[kind].append(EmbeddingBagConfig(**common))
        elif kind == "hashed":
            configs[kind].append(trx.HashedEmbeddingBagConfig(**common, mode="block", compression=args.compression))
        elif kind == "qr":
            configs[kind].append(trx.QREmbeddingBagConfig(**common, num_collisions=args.qr_collisions,
                                                          operation=args.qr_operation))
        else:
            configs[kind].append(trx.DynamicEmbeddingBagConfig(**common))
    collections = [EmbeddingBagCollection(tables=configs["full"], device=meta)]
    classes = {"hashed": trx.HashedEmbeddingBagCollection, "qr": trx.QREmbeddingBagCollection,
               "dynamic": trx.DynamicEmbeddingBagCollection}
    for kind in MIXED_KINDS:
        if configs[kind]:
            collections.append(classes[kind](tables=configs[kind], device=meta))
    mixed = MixedCollections(collections)
    dlrm = DLRM(embedding_bag_collection=mixed, dense_in_features=len(DENSE),
                dense_arch_layer_sizes=[64, args.dim], over_arch_layer_sizes=[64, 32, 1],
                dense_device=torch.device("cpu"))
    dlrm.sparse_arch = MixedSparseArch(mixed)
    return DLRMTrain(dlrm)


class MixedCollections(torch.nn.Module):
    """Several embedding-bag collections behind one `embedding_bag_configs()` (what
    DLRM's SparseArch reads); DMP shards each collection with its own sharder."""

    def __init__(self, collections):
        super().__init__()
        self.collections = torch.nn.ModuleList(collections)
        self._names = [[f for c in coll.embedding_bag_configs() for f in c.feature_names] for coll in collections]
        self._configs = [c for coll in collections for c in coll.embedding_bag_configs()]

    def embedding_bag_configs(self):
        return self._configs


class MixedSparseArch(SparseArch):
    """SparseArch over MixedCollections: features in configs order, read by name (a
    sharded collection's KeyedTensor may order keys by shard)."""

    def forward(self, features):
        parts = []
        for coll, names in zip(self.embedding_bag_collection.collections, self.embedding_bag_collection._names):
            pooled = coll(features).to_dict()
            parts += [pooled[n] for n in names]
        return torch.cat(parts, dim=1).reshape(-1, self.F, self.D)


def make_data(variant: str, args, split: str):
    from criteo_data import CriteoTSV, SyntheticCriteo

    raw = [kind == "dynamic" for kind in table_kinds(variant, args)]
    paths = args.data if split == "train" else args.test_data
    if paths:
        return CriteoTSV(paths, args.batch_size, raw_ids=raw)
    return SyntheticCriteo(args.batch_size, raw_ids=raw, seed=args.seed)


def embedding_bytes(dmp, plan, world_size: int) -> int:
    """Bytes of embedding state across all ranks: what the plan places for fixed-size tables
    (hashed buffers, QR partition tables), the rows created for dynamic tables."""
    from torchrec_ext.modules.table_kind import find_table_kind
    from torchrec_ext.sharding import ShardedDynamicEmbeddingBagCollection, planned_bytes

    total = 0
    configs = {c.name: c for c in dmp.module.model.sparse_arch.embedding_bag_collection.embedding_bag_configs()}
    for module_plan in plan.plan.values():
        for name, ps in module_plan.items():
            kind = find_table_kind(configs[name])
            if kind is None or kind.fixed_size:
                total += planned_bytes(configs[name], ps, world_size)
    for coll in dmp.module.model.sparse_arch.embedding_bag_collection.collections:
        if isinstance(coll, ShardedDynamicEmbeddingBagCollection):
            for cfg in coll.embedding_bag_configs():
                rows = torch.tensor([coll.table_size(cfg.name)])
                dist.all_reduce(rows)
                total += int(rows) * cfg.embedding_dim * 4
    return total


def worker(rank: int, world_size: int, port: int, variant: str, args, result_path: str) -> None:
    """One rank: owns the process group; everything that holds it lives in train_and_eval."""
    faulthandler.enable(all_threads=True)  # a native abort prints every thread's Python stack
    quiet_known_warnings()
    torch.set_num_threads(max(1, args.threads // world_size))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=600))
    train_and_eval(rank, world_size, variant, args, result_path)
    # TorchRec's sharded modules sit in reference cycles and hold the process group; left to
    # interpreter shutdown, the gloo group is torn down half-finalized and aborts ('terminate
    # called without an active exception'). Free them now, then destroy the group.
    gc.collect()
    dist.destroy_process_group()


def train_and_eval(rank: int, world_size: int, variant: str, args, result_path: str) -> None:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchmetrics.functional.classification import binary_auroc
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import Topology
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.distributed.types import ShardingEnv
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from tqdm import tqdm

    from torchrec_ext.sharding import get_sharders, load_checkpoint, make_planner

    torch.manual_seed(args.seed)
    model = build_model(variant, args)
    sharders = get_sharders(fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": args.sparse_lr})
    per_rank = args.batch_size // world_size
    planner = make_planner(Topology(world_size=world_size, compute_device="cpu"), batch_size=per_rank)
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), plan=plan,
                                   sharders=sharders, device=torch.device("cpu"))
    # Dense layers: plain SGD (stateless, so a checkpoint is the model alone); embedding
    # tables: TorchRec's / torchrec_ext's fused SGD in the backward pass.
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda params: torch.optim.SGD(params, lr=args.dense_lr))
    optimizer = CombinedOptimizer([dmp.fused_optimizer, dense])
    start = 0
    if args.resume:
        state = dmp.state_dict()
        state["step"] = torch.tensor(0)
        path = load_checkpoint(state, args.resume)
        start = int(state.pop("step"))
        dmp.load_state_dict(state)
        if rank == 0:
            print(f"[{variant}] resumed from {path} at step {start}", flush=True)
    steps = max(args.steps - start, 0)
    pipeline = TrainPipelineSparseDist(dmp, optimizer, torch.device("cpu"))
    batches = iter(make_data(variant, args, "train").batches(rank, world_size, start, steps))
    losses = []
    bar = tqdm(total=steps, desc=f"{variant} ({world_size} procs)", disable=rank != 0 or not args.progress,
               leave=False)
    fault = tuple(int(x) for x in args.fault_sigkill.split(":")) if args.fault_sigkill else None
    t0 = time.perf_counter()
    for step in range(start, start + steps):
        loss, _, _ = pipeline.progress(batches)  # DLRMTrain: (loss, logits, labels)
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        losses.append(float(loss) / world_size)
        bar.update(1)
        if rank == 0 and not args.progress and (step % args.log_every == 0 or step == start + steps - 1):
            print(f"[{variant}] step {step:5d}  loss {losses[-1]:.5f}", flush=True)
        done = step + 1
        if args.save and args.save_every and done % args.save_every == 0 and done < start + steps:
            save(dmp, args, done)
        if fault is not None and fault == (rank, done):
            os.kill(os.getpid(), signal.SIGKILL)  # --fault-sigkill: a rank dies mid-run
    elapsed = time.perf_counter() - t0
    bar.close()
    if args.save:
        save(dmp, args, start + steps)
    # test AUC and log loss on held-out batches (all ranks' predictions gathered)
    # (through the pipeline: it has rewritten the sharded modules' forward)
    dmp.eval()
    logits, labels = [], []
    test = iter(make_data(variant, args, "test").batches(rank, world_size, 0, args.eval_batches, "test"))
    with torch.no_grad():
        while True:
            try:
                _, out, lab = pipeline.progress(test)
            except StopIteration:
                break
            logits.append(out)
            labels.append(lab)
    logits, labels = torch.cat(logits), torch.cat(labels)
    all_logits = [torch.empty_like(logits) for _ in range(world_size)]
    all_labels = [torch.empty_like(labels) for _ in range(world_size)]
    dist.all_gather(all_logits, logits)
    dist.all_gather(all_labels, labels)
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    nbytes = embedding_bytes(dmp, plan, world_size)
    if rank == 0:
        result = {
            "variant": variant, "world_size": world_size, "start_step": start, "steps": steps,
            "losses": losses, "embedding_bytes": nbytes,
            "examples_per_s": steps * args.batch_size / elapsed if steps else 0.0,
            "auc": float(binary_auroc(torch.sigmoid(logits), labels.long())) if labels.numel() else float("nan"),
            "logloss": float(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)),
            "plan": str(plan),
        }
        with open(result_path, "w") as f:
            json.dump(result, f)
    # every rank done with its collectives before the group goes
    dist.barrier()


def save(dmp, args, step: int) -> None:
    from torchrec_ext.sharding import save_checkpoint

    state = dmp.state_dict()
    state["step"] = torch.tensor(step)
    save_checkpoint(state, args.save, step, keep=args.keep)


def run_variant(variant: str, args) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"dlrm_{variant}.json")
    mp.spawn(worker, args=(args.world_size, port, variant, args, path), nprocs=args.world_size, join=True)
    with open(path) as f:
        return json.load(f)


def report(results, args) -> None:
    full = next((r for r in results if r["variant"] == "full"), None)
    print(f"\nDLRM, {args.world_size} processes, {args.steps} steps x {args.batch_size} examples, "
          f"dim {args.dim}; tables of >= {args.large:,} ids use the variant")
    hdr = f"{'variant':<10}{'embedding MB':>14}{'vs full':>9}{'examples/s':>12}{'test AUC':>10}{'AUC vs full':>13}{'log loss':>10}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        mb = r["embedding_bytes"] / 2**20
        saving = f"{full['embedding_bytes'] / r['embedding_bytes']:>8.1f}x" if full else f"{'-':>9}"
        dauc = f"{(r['auc'] - full['auc']) / full['auc'] * 100:>+12.2f}%" if full else f"{'-':>13}"
        print(f"{r['variant']:<10}{mb:>14.1f}{saving}{r['examples_per_s']:>12,.0f}{r['auc']:>10.4f}{dauc}"
              f"{r['logloss']:>10.4f}")
    with open(os.path.join(args.out, "dlrm_results.json"), "w") as f:
        json.dump({"config": {k: v for k, v in vars(args).items()}, "results": results}, f, indent=2)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for r in results:
            ax.scatter(r["embedding_bytes"] / 2**20, r["auc"])
            ax.annotate(r["variant"], (r["embedding_bytes"] / 2**20, r["auc"]))
        ax.set_xscale("log")
        ax.set_xlabel("embedding MB (log)")
        ax.set_ylabel("test AUC")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "dlrm_auc_vs_memory.png"), dpi=100)
    except ImportError:
        pass
    print(f"\nwrote {args.out}/dlrm_results.json and dlrm_auc_vs_memory.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(ACCEPTED)}")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=2048, help="global batch (split over the processes)")
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--large", type=int, default=10_000, help="tables of at least this many ids use the variant")
    p.add_argument("--compression", type=float, default=0.1, help="hashed: buffer size / full table")
    p.add_argument("--qr-collisions", type=int, default=16, help="QR: m, the remainder table's rows")
    p.add_argument("--qr-operation", default="add", choices=["mult", "add", "concat"])
    p.add_argument("--sparse-lr", type=float, default=50.0, help="SGD on the tables (DLRM trains with large SGD rates)")
    p.add_argument("--dense-lr", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", nargs="*", help="Criteo TSV files to train on (default: generated data)")
    p.add_argument("--test-data", nargs="*", help="Criteo TSV files to evaluate on")
    p.add_argument("--save", help="folder of atomic DCP checkpoints (step_<N>), written at the end (one variant)")
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every this many steps")
    p.add_argument("--keep", type=int, default=2, help="complete checkpoints kept in --save")
    p.add_argument("--resume", help="a checkpoint, or a --save folder (its newest complete checkpoint), "
                   "to continue from on any number of processes")
    p.add_argument("--fault-sigkill", metavar="RANK:STEP",
                   help="fault injection for tests: that rank kills itself (SIGKILL) after that step")
    p.add_argument("--out", default="examples/results")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--log-every", type=int, default=100, help="steps between progress lines (no terminal)")
    p.add_argument("--progress", action="store_true", default=sys.stderr.isatty())
    args = p.parse_args()
    quiet_known_warnings()
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in ACCEPTED]
    if bad:
        p.error(f"unknown variants {bad}; choose from {ACCEPTED}")
    if args.save_every and not args.save:
        p.error("--save-every needs --save")
    if (args.save or args.resume) and len(variants) != 1:
        p.error("--save and --resume take one variant")
    if args.data and not args.test_data:
        p.error("--data needs --test-data (a held-out file, e.g. the next day)")
    if args.batch_size % args.world_size:
        p.error("--batch-size must be a multiple of --world-size")
    results = [run_variant(v, args) for v in variants]
    report(results, args)


if __name__ == "__main__":
    main()
