"""Model quality against embedding memory, on real data: every table kind over a sweep of
memory budgets, the same model, optimizer and steps for each.

Two models:
* `--model mf`: matrix factorization on implicit feedback (`--format lists`: `user item
  item ...` per line, e.g. the LightGCN splits of Gowalla; `--format ratings`: a MovieLens
  ratings file). Metrics: per-pair AUC against sampled unseen items, recall@20 over all items.
* `--model dlrm`: DLRM on a Criteo TSV (`--format criteo`). Metrics: AUC and log loss on the
  file's last rows.

Each kind is sized to `full MB / factor` for each `--factors` entry (the full table once).
Tables train with Adam (`torch.optim.Adam`; dynamic tables with their fused row-wise Adam,
their rows not being torch parameters). With several `--lrs`, each kind first trains once
per rate at `--tune-factor` on a validation split (`--valid`, else 10% of each user's /
the last 10% of the training rows) and keeps the rate of best validation AUC: the kinds'
optimizers differ (dense vs row-wise Adam), so one rate for all would favour some.
Several `--seeds` give a spread (min-max printed).
Results go to `--out`: quality_<model>.json and quality_<model>.png (AUC and the second
metric against embedding MB).

    python benchmarks/quality.py --model mf --format lists --data gowalla/train.txt \
        --test gowalla/test.txt --valid gowalla/valid.txt --lrs 0.002,0.005,0.02 --seeds 0,1
    python benchmarks/quality.py --model mf --format ratings --data ml-1m/ratings.dat --factors 4,16
    python benchmarks/quality.py --model dlrm --format criteo --data day_0.tsv --max-rows 2000000
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbench import data as qdata  # noqa: E402
from qbench.runs import TrainOptions, run_dlrm, run_mf  # noqa: E402
from qbench.tables import BudgetError, full_bytes, kinds  # noqa: E402

logger = logging.getLogger("quality")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", choices=["mf", "dlrm"], default="mf")
    p.add_argument("--format", choices=["lists", "ratings", "criteo"], default="lists")
    p.add_argument("--data", required=True, help="training file (or the whole file, split here)")
    p.add_argument("--test", default=None, help="lists: the split's test file")
    p.add_argument("--valid", default=None, help="lists: the split's validation file (for --lrs)")
    p.add_argument("--kinds", default=",".join(kinds()))
    p.add_argument("--factors", default="2,4,8,16,64", help="memory budgets: full / factor")
    p.add_argument("--seeds", default="0", help="comma-separated")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--epochs", type=int, default=None, help="default: mf 5, dlrm 1")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lrs", default="0.005", help="learning rates; with several, each kind takes "
                   "the one with the best validation AUC at --tune-factor")
    p.add_argument("--tune-factor", type=float, default=4.0)
    p.add_argument("--negatives", type=int, default=4)
    p.add_argument("--eval-users", type=int, default=3000)
    p.add_argument("--large", type=int, default=1000, help="dlrm: compress features with >= this many values")
    p.add_argument("--max-rows", type=int, default=0, help="criteo: read at most this many rows")
    p.add_argument("--min-rating", type=float, default=0.0, help="ratings: keep ratings >= this")
    p.add_argument("--max-steps", type=int, default=0, help="stop each run after this many steps (smoke tests)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="quality_out")
    return p.parse_args(argv)


def load(args):
    if args.format == "lists":
        return qdata.read_user_item_lists(args.data, args.test, valid_path=args.valid)
    if args.format == "ratings":
        return qdata.read_ratings(args.data, min_rating=args.min_rating)
    return qdata.read_criteo(args.data, max_rows=args.max_rows)


def full_mb(args, data) -> float:
    from qbench.tables import TableSpec
    if args.model == "mf":
        specs = [TableSpec("user", data.num_users, "user"), TableSpec("item", data.num_items, "item")]
    else:
        specs = [TableSpec(f"t{j}", n, f"c{j}") for j, n in enumerate(data.vocab)]
    return full_bytes(specs, args.dim) / 2**20


def summarize(runs, second):
    groups = {}
    for r in runs:
        if "error" not in r:
            groups.setdefault((r["kind"], r["factor"]), []).append(r)
    rows = []
    for (kind, factor), rs in groups.items():
        a = [r["auc"] for r in rs]
        b = [r[second] for r in rs]
        rows.append({"kind": kind, "factor": factor, "embedding_mb": rs[0]["embedding_bytes"] / 2**20,
                     "auc": statistics.fmean(a), "auc_min": min(a), "auc_max": max(a),
                     second: statistics.fmean(b), f"{second}_min": min(b), f"{second}_max": max(b),
                     "seeds": len(rs), "train_s": statistics.fmean(r["train_s"] for r in rs)})
    return rows


def print_table(rows, second, full_auc):
    print(f"\n{'kind':<16}{'budget':>8}{'emb MB':>10}{'AUC':>9}{'spread':>15}{'vs full':>9}"
          f"{second:>12}{'train s':>9}")
    print("-" * 88)
    for r in rows:
        budget = "full" if r["kind"] == "full" else f"1/{r['factor']:g}"
        spread = f"{r['auc_min']:.4f}-{r['auc_max']:.4f}" if r["seeds"] > 1 else "-"
        vs = "" if full_auc is None else f"{r['auc'] - full_auc:+.4f}"
        print(f"{r['kind']:<16}{budget:>8}{r['embedding_mb']:>10.2f}{r['auc']:>9.4f}{spread:>15}"
              f"{vs:>9}{r[second]:>12.4f}{r['train_s']:>9.1f}")


def plot(rows, second, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ["auc", second]):
        for kind in dict.fromkeys(r["kind"] for r in rows):
            pts = sorted((r["embedding_mb"], r[metric], r[f"{metric}_min"], r[f"{metric}_max"])
                         for r in rows if r["kind"] == kind)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            if kind == "full":
                ax.axhline(ys[0], color="black", linestyle="--", linewidth=1, label="full")
                ax.plot(xs, ys, "k*", markersize=10)
            else:
                ax.errorbar(xs, ys, yerr=err, marker="o", markersize=4, capsize=2, label=kind)
        ax.set_xscale("log")
        ax.set_xlabel("embedding MB (log)")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tune(run, data, kinds_, lrs, factor, seed, opt):
    """kind -> the learning rate of best validation AUC at `factor` (the first, if one)."""
    if len(lrs) == 1:
        return {k: lrs[0] for k in kinds_}
    valid = data.tuning_split(seed)
    best = {}
    for kind in kinds_:
        scores = {}
        for lr in lrs:
            try:
                res = run(valid, kind, 1.0 if kind == "full" else factor, seed, dataclasses.replace(opt, lr=lr))
            except BudgetError:
                continue
            scores[lr] = res["auc"]
        best[kind] = max(scores, key=scores.get) if scores else lrs[0]
        print(f"tune {kind}: " + ", ".join(f"lr {lr:g} AUC {a:.4f}" for lr, a in scores.items())
              + f" -> lr {best[kind]:g}", flush=True)
    return best


def write_json(path, meta, rows, runs) -> None:
    with open(path + ".json", "w") as f:
        json.dump({"meta": meta, "summary": rows, "runs": runs}, f, indent=1)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load(args)
    print(data.describe())
    lrs = [float(x) for x in args.lrs.split(",") if x]
    opt = TrainOptions(dim=args.dim, epochs=args.epochs if args.epochs is not None else (5 if args.model == "mf" else 1),
                       batch_size=args.batch_size, lr=lrs[0], negatives=args.negatives,
                       eval_users=args.eval_users, large=args.large, max_steps=args.max_steps)
    run = run_mf if args.model == "mf" else run_dlrm
    second = f"recall@{opt.k}" if args.model == "mf" else "log_loss"
    factors = [float(f) for f in args.factors.split(",") if f]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    chosen = [k for k in args.kinds.split(",") if k]
    unknown = set(chosen) - set(kinds())
    if unknown:
        raise SystemExit(f"unknown kinds {sorted(unknown)}; known: {', '.join(kinds())}")
    plan = [(k, 1.0 if k == "full" else f) for k in chosen for f in ([1.0] if k == "full" else factors)]
    t0 = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"quality_{args.model}")
    meta = {"date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]),
            "data": data.describe(), "full_mb": full_mb(args, data), "options": vars(opt),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}"}
    best_lr = tune(run, data, chosen, lrs, args.tune_factor, seeds[0], opt)
    meta["lr"] = best_lr
    runs = []
    for i, (kind, factor) in enumerate(plan):
        for seed in seeds:
            try:
                res = run(data, kind, factor, seed, dataclasses.replace(opt, lr=best_lr[kind]))
            except BudgetError as e:
                runs.append({"kind": kind, "factor": factor, "seed": seed, "error": str(e)})
                print(f"[{i + 1}/{len(plan)}] {kind} 1/{factor:g} seed {seed}: n/a ({e})")
                continue
            runs.append({"kind": kind, "factor": factor, "seed": seed, "lr": best_lr[kind], **res})
            write_json(path, meta, summarize(runs, second), runs)  # a cut-short sweep keeps its runs
            print(f"[{i + 1}/{len(plan)}] {kind} 1/{factor:g} seed {seed}: AUC {res['auc']:.4f} "
                  f"{second} {res[second]:.4f} ({res['embedding_bytes'] / 2**20:.2f} MB, {res['train_s']:.0f} s)",
                  flush=True)
    rows = summarize(runs, second)
    full_auc = next((r["auc"] for r in rows if r["kind"] == "full"), None)
    print(f"\n{data.describe()}; full tables {full_mb(args, data):.2f} MB; dim {opt.dim}, "
          f"{opt.epochs} epochs, Adam, lr per kind {best_lr}, seeds {seeds}")
    print_table(rows, second, full_auc)
    meta["elapsed_s"] = time.perf_counter() - t0
    write_json(path, meta, rows, runs)
    plot(rows, second, path + ".png", f"{args.model}: {data.describe()}")
    print(f"\nwrote {path}.json and {path}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
