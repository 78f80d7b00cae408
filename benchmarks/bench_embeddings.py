"""Speed and memory of torchrec_ext's tables against TorchRec's own EBC, in one run.

Each variant runs in its own process (so its peak memory is its own) through the same
step: forward + backward + optimizer step on power-law ids. TorchRec's EBC goes through
DistributedModelParallel with FBGEMM's fused TBE (the baseline); torchrec_ext's tables go
through DMP with their fused kernels; `nn.EmbeddingBag` trains with sparse SGD.

`--step forward` times the pooled lookup alone (no backward, no update).

Peers, what a user would pick instead: `mch` / `mch_cold` (TorchRec's managed-collision EBC,
MCH remap into a table of --rows rows, row-wise) for the dynamic tables, and
`std_eq_<variant>` (a TorchRec EBC holding the variant's bytes, ids mod its rows) for each
compressed one. `vs peer` is a variant's ratio to the baseline over its peer's.

Every speed is also a ratio to the baseline, measured in pairs: the baseline's process
stays up, and each variant's process takes turns with it, round by round (--rounds of
--iters steps each, order swapped every round). A round's ratio is the baseline's median
step over the variant's; the table gives the median ratio and the range over rounds.

Next to each figure, the memory-bandwidth bound: the bytes the step would move if each
looked-up row were read once (and, training, read and written once more by the update),
plus the pooled output (and its gradient), FBGEMM's benchmark convention, over the step's
time, against the device's copy bandwidth measured in the same run (a large tensor
copied: bytes read + written per second).

    python benchmarks/bench_embeddings.py                      # default: 8 x 1M x 64, batch 4096
    python benchmarks/bench_embeddings.py --rows 100000 --iters 5 --variants baseline,qr_mult
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time

VARIANTS = {
    "baseline": "TorchRec EBC, DMP, FBGEMM fused TBE (SGD)",
    "nn_embeddingbag": "torch.nn.EmbeddingBag, sparse SGD",
    "hashed_element": "hashed, element mode, compression 0.1",
    "hashed_block": "hashed, block mode (Z=32), compression 0.1",
    "hashed_block_per_table": "hashed_block with table batching off: one native call per table",
    "qr_mult": "QR, m=1000, mult",
    "qr_mult_per_table": "qr_mult with table batching off: one native call per table",
    "qr_add": "QR, m=1000, add",
    "qr_concat": "QR, m=1000, concat",
    "dynamic_warm": "dynamic hashtable, warm: every id already has a row",
    "dynamic_warm_per_table": "dynamic_warm with table batching off: one native call per table",
    "dynamic_cold": "dynamic hashtable, cold: every id is new (all inserts)",
    "dynamic_cold_grow": "dynamic_cold with no rows reserved: storage grows as ids arrive",
    "dynamic_lifecycle": "dynamic, admit at 2nd sighting, LFU at capacity rows/2",
    "mch": "TorchRec MC-EBC: MCH zero-collision remap into rows, row-wise (DMP), warm",
    "mch_cold": "mch, every id new: the remap's insert path",
    "mch_lazy": "mch with eviction_interval 100: new ids wait up to 100 steps for a row",
    "std_eq_hashed_element": "TorchRec EBC of hashed_element's bytes, ids mod its rows",
    "std_eq_hashed_block": "TorchRec EBC of hashed_block's bytes, ids mod its rows",
    "std_eq_qr_mult": "TorchRec EBC of qr_mult's bytes, ids mod its rows",
    "std_eq_qr_add": "TorchRec EBC of qr_add's bytes, ids mod its rows",
    "std_eq_qr_concat": "TorchRec EBC of qr_concat's bytes, ids mod its rows",
}

MCH_LAZY_INTERVAL = 100  # steps between mch_lazy's merges of new ids into its remap


def is_cold(variant: str) -> bool:
    """Every step of a cold variant brings ids no step has seen."""
    return variant.startswith(("dynamic_cold", "mch_cold"))


# what a user would pick instead of each variant: `vs peer` is the variant's ratio to the
# baseline over the peer's, both from the same run
PEERS = {
    "dynamic_warm": "mch", "dynamic_warm_per_table": "mch", "dynamic_lifecycle": "mch",
    "dynamic_cold": "mch_cold", "dynamic_cold_grow": "mch_cold",
    **{v: f"std_eq_{v}" for v in ("hashed_element", "hashed_block", "qr_mult", "qr_add", "qr_concat")},
    "hashed_block_per_table": "std_eq_hashed_block", "qr_mult_per_table": "std_eq_qr_mult",
}


def power_law_ids(n_rows: int, count: int, alpha: float, gen):
    """Zipf(alpha) ids in [0, n_rows) by inverse-CDF sampling; id 0 is the most frequent.
    Ranks are scattered by a fixed permutation so hot ids do not share a region."""
    import torch

    ranks = torch.arange(1, n_rows + 1, dtype=torch.float64)
    cdf = torch.cumsum(ranks.pow(-alpha), 0)
    cdf /= cdf[-1].clone()
    u = torch.rand(count, generator=gen, dtype=torch.float64)
    ids = torch.searchsorted(cdf, u).clamp_(max=n_rows - 1)
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(1234))
    return perm[ids]


def make_batches(args, num: int):
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    gen = torch.Generator().manual_seed(0)
    keys = [f"f{t}" for t in range(args.tables)]
    per = args.batch * args.bag
    batches = []
    for _ in range(num):
        values = power_law_ids(args.rows, per * args.tables, args.alpha, gen)
        lengths = torch.full((args.tables * args.batch,), args.bag, dtype=torch.long)
        batches.append(KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths))
    return batches


def build(variant: str, args, device):
    """The module and, for unsharded variants, its optimizer."""
    import torch
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

    from torchrec_ext import (
        DynamicEmbeddingBagCollection,
        DynamicEmbeddingBagConfig,
        HashedEmbeddingBagCollection,
        HashedEmbeddingBagConfig,
        QREmbeddingBagCollection,
        QREmbeddingBagConfig,
    )

    common = lambda t: dict(name=f"t{t}", num_embeddings=args.rows, embedding_dim=args.dim,  # noqa: E731
                            feature_names=[f"f{t}"])
    T = range(args.tables)
    if variant == "baseline":
        return EmbeddingBagCollection([EmbeddingBagConfig(**common(t)) for t in T], device=torch.device("meta"))
    if variant.startswith("std_eq_"):
        rows = equal_memory_rows(variant[len("std_eq_"):], args)
        return EmbeddingBagCollection([EmbeddingBagConfig(**dict(common(t), num_embeddings=rows)) for t in T],
                                      device=torch.device("meta"))
    if variant.startswith("mch"):
        from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
        from torchrec.modules.mc_modules import (
            DistanceLFU_EvictionPolicy,
            ManagedCollisionCollection,
            MCHManagedCollisionModule,
        )

        tables = [EmbeddingBagConfig(**common(t)) for t in T]
        # eviction_interval 1: each step's new ids get rows at once, as a dynamic table's do;
        # mch_lazy merges them every 100 steps (a timed median mostly misses that step)
        interval = MCH_LAZY_INTERVAL if variant == "mch_lazy" else 1
        mcs = {c.name: MCHManagedCollisionModule(zch_size=args.rows, device=torch.device("meta"),
                                                 eviction_policy=DistanceLFU_EvictionPolicy(),
                                                 eviction_interval=interval) for c in tables}
        return ManagedCollisionEmbeddingBagCollection(
            EmbeddingBagCollection(tables, device=torch.device("meta")),
            ManagedCollisionCollection(mcs, tables), return_remapped_features=False)
    if variant.startswith("hashed_"):
        mode = variant.split("_")[1]  # hashed_<mode>[_per_table]
        return HashedEmbeddingBagCollection(
            [HashedEmbeddingBagConfig(**common(t), mode=mode, compression=0.1, seed=t) for t in T],
            device=torch.device("meta"))
    if variant.startswith("qr_"):
        op = variant.split("_")[1]  # qr_<op>[_per_table]
        return QREmbeddingBagCollection(
            [QREmbeddingBagConfig(**common(t), num_collisions=1000, operation=op) for t in T],
            device=torch.device("meta"))
    if variant.startswith("dynamic"):
        from torchrec_ext.admission import FrequencyAdmission
        from torchrec_ext.eviction import LFUEviction

        # dynamic_cold reserves its rows up front (initial_capacity: as many as a baseline
        # table holds), as HierarchicalKV and dynamicemb tables fix their capacity, so its
        # inserts write memory the table already owns; dynamic_cold_grow starts empty and
        # pays for fresh memory every step. The warm tables keep the default: their rows
        # come from the warm-up steps, before any timing.
        life = dict(initial_capacity=args.rows) if variant == "dynamic_cold" else {}
        if variant == "dynamic_lifecycle":
            life = dict(admission=FrequencyAdmission(2), eviction=LFUEviction(), max_capacity=args.rows // 2)
        return DynamicEmbeddingBagCollection([DynamicEmbeddingBagConfig(**common(t), **life) for t in T],
                                             device=torch.device("meta"))
    raise ValueError(variant)


def equal_memory_rows(variant: str, args) -> int:
    """Rows per table of a TorchRec EBC holding what `variant` holds (its parameters, per
    table, over dim x 4 bytes)."""
    return max(1, table_bytes(build(variant, args, None)) // (args.tables * args.dim * 4))


def table_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class Runner:
    """Lives in a child process: builds one variant and times its step on request."""

    def __init__(self, variant: str, args):
        import torch

        self.variant, self.args = variant, args
        self.device = device = torch.device(args.device)
        torch.set_num_threads(args.threads or torch.get_num_threads())
        self.rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.step, self.held_bytes = self._build()
        self.batches = [b.to(device) for b in make_batches(args, args.batches)]
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.served = 0  # batches handed out: dynamic_cold shifts each one to unseen ids
        # dynamic_warm times only after every id has a row
        warmup = args.warmup
        if variant.startswith("dynamic_warm") or variant == "mch":
            warmup = max(warmup, len(self.batches))
        elif variant == "mch_lazy":  # past its first merge of the history
            warmup = max(warmup, len(self.batches), MCH_LAZY_INTERVAL + 1)
        for _ in range(warmup):
            self.step(self._next_batch())
        self.sync()

    def _build(self):
        import torch
        import torch.distributed as dist

        args, device = self.args, self.device
        if self.variant == "nn_embeddingbag":
            tables = torch.nn.ModuleList(
                torch.nn.EmbeddingBag(args.rows, args.dim, mode="sum", sparse=True, device=device)
                for _ in range(args.tables))
            opt = torch.optim.SGD(tables.parameters(), lr=0.01)

            def step(kjt):
                with torch.set_grad_enabled(args.step == "train"):
                    outs = [tables[t](jt.values(), jt.offsets()[:-1]) for t, jt in enumerate(kjt.to_dict().values())]
                    out = torch.cat(outs, dim=1)
                if args.step == "train":
                    opt.zero_grad()
                    out.sum().backward()
                    opt.step()

            return step, lambda: table_bytes(tables)

        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import ParameterConstraints, Topology
        from torchrec.distributed.types import ShardingEnv, ShardingType
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        from torchrec_ext.sharding import get_sharders, make_planner

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        model = torch.nn.Module()
        model.ebc = build(self.variant, args, device)
        mods = None
        if self.variant.startswith("std_eq_"):  # what mod-hashing into fewer rows costs, in the step
            mods = torch.tensor(model.ebc.embedding_bag_configs()[0].num_embeddings, device=device)
        # *_per_table: table batching off, one native call per table
        fused = {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.01}
        sharders = get_sharders(fused_params=fused, table_batching=not self.variant.endswith("_per_table"))
        sharding_type, kernels = ShardingType.TABLE_WISE.value, None
        if self.variant.startswith("mch"):  # TorchRec shards managed collisions row-wise only
            from torchrec.distributed.mc_embeddingbag import ManagedCollisionEmbeddingBagCollectionSharder

            from torchrec_ext.sharding import RowWiseCpuEmbeddingBagCollectionSharder

            sharders = [ManagedCollisionEmbeddingBagCollectionSharder(
                ebc_sharder=RowWiseCpuEmbeddingBagCollectionSharder(fused_params=fused))]
            sharding_type, kernels = ShardingType.ROW_WISE.value, ["fused"]  # not UVM: no GPU here
        constraints = {f"t{t}": ParameterConstraints(sharding_types=[sharding_type], compute_kernels=kernels)
                       for t in range(args.tables)}
        planner = make_planner(Topology(world_size=1, compute_device=device.type), batch_size=args.batch,
                               constraints=constraints)
        plan = planner.plan(model, sharders)
        dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
                                       plan=plan, sharders=sharders, device=device)

        def step(kjt):
            with torch.set_grad_enabled(args.step == "train"):
                if mods is not None:
                    kjt = KeyedJaggedTensor(kjt.keys(), kjt.values() % mods, lengths=kjt.lengths(),
                                            stride=kjt.stride())
                out = dmp.module.ebc(kjt)
                if isinstance(out, tuple):  # an MC-EBC also returns the remapped ids
                    out = out[0]
            if args.step == "train":
                out.values().sum().backward()  # embedding tables update in backward (fused)

        # after the run: a dynamic table holds what the batches created
        return step, lambda: sum(v.numel() * v.element_size() for v in _local_tensors(dmp.state_dict()))

    def _next_batch(self):
        kjt = self.batches[self.served % len(self.batches)]
        self.served += 1
        if is_cold(self.variant):
            kjt = _shift_ids(kjt, self.served << 40)
        return kjt

    def time(self, n: int) -> list:
        """One untimed step (the other process has had the caches), then n timed ones."""
        from tqdm import tqdm

        batches = [self._next_batch() for _ in range(n + 1)]
        self.step(batches[0])
        self.sync()
        times = []
        for kjt in tqdm(batches[1:], desc=self.variant, leave=False, disable=not self.args.progress):
            t0 = time.perf_counter()
            self.step(kjt)
            self.sync()
            times.append(time.perf_counter() - t0)
        return times

    def stats(self) -> dict:
        import torch

        out = {"table_bytes": self.held_bytes(),
               "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               "rss_before_tables_bytes": self.rss_before}
        if self.device.type == "cuda":
            out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        return out


_REPLY = "@@bench "  # marks the child's answers among whatever else reaches its stdout


def serve(variant: str, args) -> None:
    """The child's loop: answers `time N`, `stats` and `quit` read from stdin."""
    runner = Runner(variant, args)
    print(_REPLY + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "time":
            print(_REPLY + json.dumps({"times": runner.time(int(cmd[1]))}), flush=True)
        elif cmd[0] == "stats":
            print(_REPLY + json.dumps(runner.stats()), flush=True)
        else:
            break


class Child:
    """A variant's process, seen from the parent."""

    def __init__(self, variant: str):
        self.variant = variant
        self.err = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: nothing can block on it
        cmd = [sys.executable, __file__, "--child", variant] + sys.argv[1:]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                     text=True)
        self._ask(None)  # wait until it is built and warm

    def _ask(self, command):
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(_REPLY):
                return json.loads(line[len(_REPLY):])
        self.err.seek(0)
        print(self.err.read()[-3000:], file=sys.stderr)
        raise SystemExit(f"variant {self.variant} failed")

    def time(self, n: int) -> list:
        return self._ask(f"time {n}")["times"]

    def stats(self) -> dict:
        return self._ask("stats")

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait()
        self.err.close()


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def ids_per_step(args) -> int:
    return args.tables * args.batch * args.bag


def step_bytes(args) -> int:
    """Bytes a step moves at the least (FBGEMM's benchmark convention): every looked-up
    row read once, the ids, and the pooled output written; training adds the output's
    gradient read and every looked-up row read and written by the update. The same for
    every variant: the traffic of the virtual [rows, dim] fp32 tables."""
    ids = ids_per_step(args)
    rows = ids * args.dim * 4
    pooled = args.tables * args.batch * args.dim * 4
    forward = rows + ids * 8 + pooled
    return forward if args.step == "forward" else forward + pooled + 2 * rows


def copy_bandwidth(device_name: str, threads: int, mib: int = 512) -> float:
    """The device's copy bandwidth in bytes/s (read + written): the best of 6 copies of
    `mib` MiB (the first also faults the destination in, so it is never the best)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    src = torch.ones(mib << 18, device=device)  # mib MiB of fp32
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        sync()
        t0 = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def measure(variants, args) -> list:
    """Times every variant in rounds, each round next to a round of the baseline (the two
    processes take turns, never run at once, and swap order every round), so a ratio
    compares steps taken within a second of each other rather than minutes apart."""
    from tqdm import tqdm

    base = Child("baseline") if "baseline" in variants else None
    base_times: list = []
    results = []
    bar = tqdm(total=len(variants) * args.rounds, desc="rounds", disable=not args.progress)
    for v in variants:
        print(f"[{len(results) + 1}/{len(variants)}] {v}: {VARIANTS[v]}", file=sys.stderr, flush=True)
        child = base if v == "baseline" else Child(v)
        # A cold step's cost grows with the table it inserts into: dynamic_cold times about
        # --iters steps over all its rounds, so its table spans what one run of --iters
        # steps creates however many rounds there are. An odd count of at least 3 keeps a
        # step that grows the index (a rehash) out of a round's median.
        iters = max(3, -(-args.iters // args.rounds) | 1) if is_cold(v) else args.iters
        times, ratios = [], []
        for r in range(args.rounds):
            if child is base:
                times.append(base.time(args.iters))
                base_times.append(times[-1])
            else:
                pair = [base, child] if base is not None else [child]
                got = {id(c): c.time(iters if c is child else args.iters)
                       for c in (pair if r % 2 == 0 else pair[::-1])}
                times.append(got[id(child)])
                if base is not None:
                    base_times.append(got[id(base)])
                    ratios.append(_median(got[id(base)]) / _median(times[-1]))
            bar.update(1)
        step = _median([t for ts in times for t in ts])
        results.append({"variant": v, "description": VARIANTS[v], "step": args.step, "step_ms": step * 1e3,
                        "ids_per_s": ids_per_step(args) / step,
                        "bytes_per_step": step_bytes(args),
                        "ratio": _median(ratios) if ratios else (1.0 if child is base else None),
                        "ratio_rounds": ratios, **child.stats()})
        if child is not base:
            child.close()
    bar.close()
    if base is not None:  # the baseline's own figure: every round it ran
        b = next(r for r in results if r["variant"] == "baseline")
        b["step_ms"] = _median([t for ts in base_times for t in ts]) * 1e3
        b["ids_per_s"] = ids_per_step(args) / (b["step_ms"] / 1e3)
        b.update(base.stats())
        base.close()
    by_name = {r["variant"]: r for r in results}
    for r in results:
        peer = by_name.get(PEERS.get(r["variant"], ""))
        r["peer"] = peer["variant"] if peer else None
        r["vs_peer"] = r["ratio"] / peer["ratio"] if peer and r["ratio"] and peer["ratio"] else None
    copy = copy_bandwidth(args.device, args.threads)  # with no child alive
    for r in results:
        r["copy_bytes_per_s"] = copy
        r["bytes_per_s"] = r["bytes_per_step"] / (r["step_ms"] / 1e3)
        r["of_copy_bandwidth"] = r["bytes_per_s"] / copy
    return results


def _shift_ids(kjt, offset: int):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor.from_lengths_sync(keys=kjt.keys(), values=kjt.values() + offset, lengths=kjt.lengths())


def _local_tensors(state):
    """Tensors held on this rank (a dynamic table: the keys and rows it has created)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    from torchrec_ext.modules.dynamic import KeyedRows

    for v in state.values():
        if isinstance(v, KeyedRows):
            yield from (v.keys, v.values)
        elif isinstance(v, ShardedTensor):
            yield from (s.tensor for s in v.local_shards())
        else:
            yield v


def print_table(results):
    hdr = (f"{'variant':<24}{'ids/s':>14}{'vs baseline':>13}{'rounds':>14}{'step ms':>10}{'GB/s':>8}"
           f"{'of copy':>9}{'table MB':>11}{'peak RSS MB':>13}{'vs peer':>9}  peer")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        spread = (f"{min(r['ratio_rounds']):.2f}-{max(r['ratio_rounds']):.2f}" if r["ratio_rounds"] else "-")
        print(f"{r['variant']:<24}{r['ids_per_s']:>14,.0f}{ratio:>13}{spread:>14}{r['step_ms']:>10.1f}"
              f"{r['bytes_per_s'] / 1e9:>8.1f}{r['of_copy_bandwidth']:>9.0%}"
              f"{r['table_bytes'] / 2**20:>11.1f}{r['peak_rss_bytes'] / 2**20:>13.0f}"
              + (f"{r['vs_peer']:>8.2f}x  {r['peer']}" if r.get("vs_peer") is not None else f"{'-':>9}"))


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.barh(names, [r["ids_per_s"] / 1e6 for r in results])
    a.set_xlabel("M ids/s (" + ("forward" if results and results[0].get("step") == "forward"
                                else "fwd + bwd + optimizer") + ")")
    b.barh(names, [r["table_bytes"] / 2**20 for r in results])
    b.set_xscale("log")
    b.set_xlabel("table MB (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", type=int, default=8)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--bag", type=int, default=8, help="ids per bag")
    p.add_argument("--alpha", type=float, default=1.05, help="power-law exponent of the ids")
    p.add_argument("--iters", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds per variant, each next to one of the baseline")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--step", choices=["train", "forward"], default="train",
                   help="train: forward + backward + fused SGD; forward: the pooled lookup alone")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON and the PNG")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--progress", action="store_true", default=sys.stderr.isatty())
    args = p.parse_args()

    if args.child:
        serve(args.child, args)
        # the sharded modules (in reference cycles) hold the process group: free them before
        # destroying it, not at interpreter shutdown, where gloo's teardown can abort
        import gc

        import torch.distributed as dist

        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    results = measure(variants, args)
    print(f"\n{args.tables} tables x {args.rows:,} rows x dim {args.dim}, batch {args.batch}, "
          f"{args.bag} ids/bag, power-law alpha {args.alpha}, device {args.device}, "
          f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), step: {args.step}\n")
    print_table(results)
    print(f"\nGB/s: the step's least traffic ({results[0]['bytes_per_step'] / 1e6:.1f} MB) over its time; "
          f"of copy: against this device's copy bandwidth, {results[0]['copy_bytes_per_s'] / 1e9:.1f} GB/s")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"bench_{args.device}")
    with open(stem + ".json", "w") as f:
        json.dump({"config": {k: v for k, v in vars(args).items() if k not in ("child", "progress")},
                   "results": results}, f, indent=2)
    plot(results, stem + ".png")
    print(f"\nwrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
