"""Throughput of the dynamic tables' native hash index (find / insert keys per second).

Batches of random int64 keys go through `HashTable` on the chosen device:
  insert      all-new keys into a growing table (index growth included)
  find        keys all present
  find_values find, then each key's row of a [rows, --dim] fp32 value table gathered
              (the lookup HierarchicalKV's find measures, dim 8 by default)
  find_or_insert  a training-like batch: 90% present keys, 10% new, with duplicates
A Python dict doing the same work is the reference point on CPU.

    python benchmarks/bench_hash_table.py                       # CPU, 4M keys, batch 256K
    python benchmarks/bench_hash_table.py --device cuda --keys 16000000 --batch 1048576
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(fn, sync) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def run(args) -> dict:
    import torch

    from torchrec_ext import HashTable

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(-(2**62), 2**62, (args.keys,), generator=g)
    batches = keys.split(args.batch)
    table = HashTable("bench", device=device)
    table.find_or_insert(batches[0].to(device))  # warm-up (and the first growth)
    table.clear()
    dev_batches = [b.to(device) for b in batches]
    t_insert = sum(timed(lambda b=b: table.find_or_insert(b), sync) for b in dev_batches)
    t_find = sum(timed(lambda b=b: table.find(b), sync) for b in dev_batches)
    values = torch.randn(table.rows_in_use_bound, args.dim, device=device)
    t_values = sum(timed(lambda b=b: values.index_select(0, table.find(b)), sync) for b in dev_batches)
    mixed = []
    for b in dev_batches:
        m = b[torch.randint(0, b.numel(), (b.numel(),), generator=g).to(device)]  # duplicates
        new = torch.randint(-(2**62), 2**62, (b.numel() // 10,), generator=g).to(device)
        m[: new.numel()] = new
        mixed.append(m)
    t_mixed = sum(timed(lambda m=m: table.find_or_insert(m), sync) for m in mixed)
    n = args.keys
    result = {"device": str(device), "keys": n, "batch": args.batch, "threads": torch.get_num_threads(),
              "dim": args.dim, "insert_keys_per_s": n / t_insert, "find_keys_per_s": n / t_find,
              "find_values_keys_per_s": n / t_values,
              "find_or_insert_keys_per_s": n / t_mixed, "final_size": len(table), "slots": table.slots}
    if device.type == "cpu":
        d = {}
        plain = [b.tolist() for b in batches]
        t0 = time.perf_counter()
        for b in plain:
            for k in b:
                d.setdefault(k, len(d))
        t_dict_insert = time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in plain:
            [d.get(k, -1) for k in b]
        t_dict_find = time.perf_counter() - t0
        result.update(dict_insert_keys_per_s=n / t_dict_insert, dict_find_keys_per_s=n / t_dict_find)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=4_000_000)
    p.add_argument("--batch", type=int, default=262_144)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dim", type=int, default=8, help="value width of find_values")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    r = run(args)
    print(f"hash index on {r['device']} ({r['threads']} threads): {r['keys']:,} keys in batches of {r['batch']:,}")
    print(f"{'operation':<18}{'M keys/s':>10}{'dict M keys/s':>15}")
    for op, dict_key in (("insert", "dict_insert_keys_per_s"), ("find", "dict_find_keys_per_s"),
                         ("find_values", None), ("find_or_insert", None)):
        ref = r.get(dict_key) if dict_key else None
        ref_s = f"{ref / 1e6:>15.2f}" if ref else f"{'-':>15}"
        print(f"{op:<18}{r[op + '_keys_per_s'] / 1e6:>10.2f}{ref_s}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"bench_hash_table_{args.device}.json")
    with open(path, "w") as f:
        json.dump(r, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
