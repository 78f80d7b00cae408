"""Soak: dynamic tables trained for many steps at capacity, with admission, eviction and
fused Adam, on an id stream that keeps bringing new ids (a Zipf head that drifts over an
unbounded id space). Checks, and prints, what a weeks-long job depends on:

* resident memory stays flat: the median RSS of the run's last quarter is within
  --rss-tolerance (default 5%) of the RSS at the end of warm-up (the peak is printed too);
* every table stays within its capacity, and its statistics add up at every check
  (admitted - evicted = rows held);
* a checkpoint at the end reloads into a fresh model as the identical table (every key's
  row, optimizer state and metadata).

Exits non-zero if any check fails; writes --out/soak.json.

    python benchmarks/soak.py                       # 20,000 steps, two tables (LFU and TTL)
    python benchmarks/soak.py --steps 600 --check-every 100    # the short form CI runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(args):
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    from torchrec_ext import DynamicEmbeddingBagCollection, DynamicEmbeddingBagConfig
    from torchrec_ext.admission import FrequencyAdmission
    from torchrec_ext.eviction import LFUEviction, TTLEviction

    common = dict(num_embeddings=args.capacity, embedding_dim=args.dim, max_capacity=args.capacity,
                  initial_capacity=args.capacity, block_size=4096, delta_window=args.delta_window)
    tables = [
        DynamicEmbeddingBagConfig(name="lfu", feature_names=["f_lfu"], eviction=LFUEviction(),
                                  admission=FrequencyAdmission(2, counter="sketch"), on_full="reject", **common),
        DynamicEmbeddingBagConfig(name="ttl", feature_names=["f_ttl"], eviction=TTLEviction(steps=args.ttl),
                                  eviction_interval=args.ttl // 4 or 1,
                                  admission=FrequencyAdmission(2, counter="exact", counter_capacity=1 << 18),
                                  on_full="reject", **common),
    ]
    return DynamicEmbeddingBagCollection(tables=tables, fused_params={
        "optimizer": EmbOptimType.ADAM, "learning_rate": 0.01})


def batch(args, step: int, g: torch.Generator):
    """Each feature: batch x bag ids, Zipf ranks over a window that slides by --drift ids
    per step, so old ids fade and new ones arrive for ever."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    n = args.batch * args.bag
    values = []
    for f in range(2):
        u = torch.rand(n, generator=g, dtype=torch.float64)
        ranks = torch.floor(torch.exp(u * torch.log(torch.tensor(float(args.window))))).long()  # ~1/rank
        values.append(ranks + step * args.drift + f * (1 << 40))
    lengths = torch.full((2 * args.batch,), args.bag, dtype=torch.long)
    return KeyedJaggedTensor.from_lengths_sync(keys=["f_lfu", "f_ttl"], values=torch.cat(values), lengths=lengths)


def table_rows(model, name):
    """A table's rows by key: keys, values, optimizer state and metadata (sorted by key)."""
    rows = model._holder(name).rows
    e = rows.export()
    return {"keys": e.keys, "values": e.values, **{f"opt.{k}": v for k, v in e.optimizer.items()},
            **{f"meta.{k}": v for k, v in e.metadata.items()}}


def check_tables(model, args, step, failures):
    for name in ("lfu", "ttl"):
        s = model.stats(name)
        size = model.table_size(name)
        if size > args.capacity:
            failures.append(f"step {step}: table '{name}' holds {size} rows, capacity {args.capacity}")
        if s["admitted"] - s["evicted"] != size:
            failures.append(f"step {step}: table '{name}': admitted {s['admitted']} - evicted {s['evicted']} "
                            f"!= size {size}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--warmup", type=float, default=0.2, help="share of the steps before RSS is compared")
    p.add_argument("--capacity", type=int, default=100_000, help="rows per table")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--bag", type=int, default=4)
    p.add_argument("--window", type=int, default=2_000_000, help="ids the Zipf ranks span")
    p.add_argument("--drift", type=int, default=50, help="ids the window slides per step")
    p.add_argument("--ttl", type=int, default=200, help="TTL table: steps a row lives unseen")
    p.add_argument("--delta-window", type=int, default=1000, help="steps of erased keys kept for deltas")
    p.add_argument("--check-every", type=int, default=1000)
    p.add_argument("--rss-tolerance", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = build(args)
    target = torch.randn(args.batch, 2 * args.dim, generator=g)
    warm_end = max(1, int(args.steps * args.warmup))
    failures, samples = [], []
    rss_warm = None
    t0 = time.perf_counter()
    for step in range(args.steps):
        pooled = model(batch(args, step, g)).values()
        loss = torch.nn.functional.mse_loss(pooled, target)
        loss.backward()
        if step + 1 == warm_end:
            rss_warm = rss_mb()
        if (step + 1) % args.check_every == 0 or step + 1 == args.steps:
            check_tables(model, args, step + 1, failures)
            samples.append({"step": step + 1, "rss_mb": rss_mb(), "loss": float(loss),
                            **{f"{n}_{k}": model.stats(n)[k] for n in ("lfu", "ttl")
                               for k in ("size", "admitted", "evicted", "rejected")}})
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in samples[-1].items()),
                  flush=True)
    elapsed = time.perf_counter() - t0
    after = [s["rss_mb"] for s in samples if s["step"] > warm_end] or [rss_mb()]
    rss_peak = max(after)
    # a leak raises the late samples; one allocator peak does not: the check compares the
    # median of the run's last quarter of samples with the RSS at the end of warm-up
    late = sorted(after[-max(1, len(after) // 4):])
    rss_late = late[len(late) // 2]
    growth = rss_late / rss_warm - 1.0
    if growth > args.rss_tolerance:
        failures.append(f"RSS grew {growth:+.1%} after warm-up ({rss_warm:.1f} -> {rss_late:.1f} MB, median of "
                        f"the last quarter), tolerance {args.rss_tolerance:.0%}")

    # the final checkpoint reloads into a fresh model as the identical table
    from torchrec_ext.sharding import load_checkpoint, save_checkpoint

    with tempfile.TemporaryDirectory() as ckpt:
        save_checkpoint(model.state_dict(), ckpt, args.steps)
        fresh = build(args)
        state = fresh.state_dict()
        load_checkpoint(state, ckpt)
        fresh.load_state_dict(state)
    for name in ("lfu", "ttl"):
        a, b = table_rows(model, name), table_rows(fresh, name)
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
            failures.append(f"table '{name}': the reloaded checkpoint differs")
    result = {"config": vars(args), "seconds": elapsed, "steps_per_s": args.steps / elapsed,
              "rss_warm_mb": rss_warm, "rss_peak_after_warmup_mb": rss_peak, "rss_late_median_mb": rss_late,
              "rss_growth": growth, "rss_peak_growth": rss_peak / rss_warm - 1.0,
              "samples": samples, "failures": failures}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{args.steps} steps in {elapsed:.0f} s ({args.steps / elapsed:.0f} steps/s); RSS at the end of "
          f"warm-up {rss_warm:.1f} MB, median of the last quarter {rss_late:.1f} MB ({growth:+.2%}), largest "
          f"after warm-up {rss_peak:.1f} MB ({rss_peak / rss_warm - 1:+.2%}); "
          f"checkpoint reload {'identical' if not any('reloaded' in x for x in failures) else 'DIFFERS'}")
    for x in failures:
        print("FAILED:", x)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
