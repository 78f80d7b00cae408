"""benchmarks/quality.py: its readers against a Python parse, its metrics against brute
force, its budget layouts against the budget, and the whole sweep end to end on tiny
generated files of each format (no quality asserted: the files are random)."""

import itertools
import json
import math
import os
import random
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import quality  # noqa: E402
from qbench import data as qdata  # noqa: E402
from qbench import metrics, tables  # noqa: E402
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor  # noqa: E402


def write_lists(path, users=30, items=40, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for u in range(users):
            f.write(" ".join(map(str, [u * 3 + 7] + rng.sample(range(items), rng.randint(3, 8)))) + "\n")


def write_ratings(path, sep="::", rows=400, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        if sep == ",":
            f.write("userId,movieId,rating,timestamp\n")
        for _ in range(rows):
            f.write(sep.join(map(str, [rng.randint(1, 40), rng.randint(100, 160), rng.randint(1, 5),
                                       rng.randint(10**8, 10**9)])) + "\n")


def write_criteo(path, rows=300, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(rows):
            dense = [str(rng.randint(0, 50)) if rng.random() > 0.2 else "" for _ in range(13)]
            cats = [format(rng.randint(0, 20 + 200 * j), "08x") if rng.random() > 0.1 else "" for j in range(26)]
            f.write("\t".join([str(int(rng.random() < 0.3))] + dense + cats) + "\n")


def test_user_item_lists_reader_matches_a_python_parse(tmp_path):
    p = tmp_path / "train.txt"
    write_lists(p)
    data = qdata.read_user_item_lists(str(p), test_fraction=0.25, seed=3)
    raw = {}
    for line in open(p):
        u, *items = map(int, line.split())
        raw[u] = set(items)
    users, items = sorted(raw), sorted(set().union(*raw.values()))
    assert (data.num_users, data.num_items) == (len(users), len(items))
    got = {}
    for u, i in torch.cat([data.train, data.test]).tolist():
        got.setdefault(users[u], set()).add(items[i])
    assert got == raw
    for u in set(data.test[:, 0].tolist()):  # every test user keeps training pairs
        assert (data.train[:, 0] == u).sum() >= 1


def test_split_files_stay_as_given(tmp_path):
    write_lists(tmp_path / "train.txt", seed=1)
    write_lists(tmp_path / "test.txt", seed=2)
    write_lists(tmp_path / "valid.txt", seed=4)
    data = qdata.read_user_item_lists(str(tmp_path / "train.txt"), str(tmp_path / "test.txt"),
                                      valid_path=str(tmp_path / "valid.txt"))
    n_pairs = lambda name: sum(len(line.split()) - 1 for line in open(tmp_path / name))  # noqa: E731
    assert len(data.train) == n_pairs("train.txt") and len(data.test) == n_pairs("test.txt")
    assert len(data.tuning_split().test) == n_pairs("valid.txt")


@pytest.mark.parametrize("sep", ["::", "\t", ","])
def test_ratings_reader_reads_every_separator(tmp_path, sep):
    p = tmp_path / "ratings"
    write_ratings(p, sep=sep)
    data = qdata.read_ratings(str(p), min_rating=3)
    lines = open(p).read().splitlines()[1 if sep == "," else 0:]
    kept = {(int(a), int(b)) for a, b, r, _ in (ln.split(sep) for ln in lines) if int(r) >= 3}
    assert len(data.train) + len(data.test) == len(kept)


def test_criteo_reader_indexes_values_by_first_appearance(tmp_path):
    p = tmp_path / "c.tsv"
    write_criteo(p, rows=100)
    data = qdata.read_criteo(str(p), test_fraction=0.2, min_count=2)
    rows = [ln.rstrip("\n").split("\t") for ln in open(p)]
    j = 3
    counts = {}
    for r in rows[:80]:
        counts[r[14 + j]] = counts.get(r[14 + j], 0) + 1
    index = {}
    for r in rows[:80]:
        if counts[r[14 + j]] >= 2:
            index.setdefault(r[14 + j], len(index) + 1)
    want = [index.get(r[14 + j], 0) for r in rows]
    got = torch.cat([data.train["sparse"][:, j], data.test["sparse"][:, j]]).tolist()
    assert got == want and data.vocab[j] == len(index) + 1
    dense0 = [math.log1p(float(r[1])) if r[1] else 0.0 for r in rows[80:]]
    torch.testing.assert_close(data.test["dense"][:, 0], torch.tensor(dense0))
    with open(tmp_path / "bad.tsv", "w") as f:
        f.write("1\t2\t3\n")
    with pytest.raises(ValueError, match="3 columns"):
        qdata.read_criteo(str(tmp_path / "bad.tsv"))


def test_auc_matches_counting_pairs():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (60,), generator=g).float()  # many ties
    labels = torch.rand(60, generator=g) < 0.4
    pos, neg = scores[labels].tolist(), scores[~labels].tolist()
    want = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))
    assert metrics.auc(scores, labels) == pytest.approx(want)
    assert metrics.pairwise_auc(torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 2.0], [0.0, -1.0]])) == 0.625


def test_recall_counts_hits_outside_the_training_items():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    exclude = torch.tensor([[True, False, False, False]])
    relevant = torch.tensor([[False, False, True, True]])
    assert metrics.recall_at_k(scores, exclude, relevant, 2).item() == 0.5  # top-2 of {1,2,3}: 1, 2


@pytest.mark.parametrize("n,factor", [(40981, 2), (40981, 64), (3706, 64), (1000, 16)])
def test_qr_layouts_fit_the_budget_and_tell_every_id_apart(n, factor):
    budget = int(n / factor)
    layout = tables._qr_layout(n, budget)
    factors = ([layout["num_collisions"], math.ceil(n / layout["num_collisions"])]
               if layout["partition"] == "qr" else layout["factors"])
    assert sum(factors) <= budget and math.prod(factors) >= n
    with pytest.raises(tables.BudgetError):
        tables._qr_layout(10_000, 20)


def test_each_kind_fits_its_budget_and_mod_hash_reads_id_mod_rows():
    specs = [tables.TableSpec("t", 5000, "f")]
    full = tables.full_bytes(specs, 16)
    for kind in tables.kinds():
        for factor in (2, 8):
            m = tables.build(kind, specs, 16, factor)
            assert tables.embedding_bytes(m) <= full / factor * 1.02 or kind == "full", kind
    m = tables.build("modhash", specs, 16, 8)
    ids = torch.tensor([3, 628, 4999, 0])
    kjt = KeyedJaggedTensor(["f"], ids, lengths=torch.ones(4, dtype=torch.int32))
    w = m.ebc.embedding_bags["t"].weight
    torch.testing.assert_close(m(kjt)["f"], w[ids % w.shape[0]])


def test_low_rank_pools_low_rows_then_maps_them_up():
    specs = [tables.TableSpec("t", 5000, "f")]
    m = tables.build("lowrank", specs, 16, 4)
    w = m.ebc.embedding_bags["t"].weight
    assert w.shape == (5000, 3)  # 5000 * 16 / 4 bytes hold 3 columns plus the 3 x 16 map
    ids, lengths = torch.tensor([3, 628, 4999, 0, 17]), torch.tensor([2, 0, 3], dtype=torch.int32)
    kjt = KeyedJaggedTensor(["f"], ids, lengths=lengths)
    bags = torch.stack([w[ids[:2]].sum(0), torch.zeros(3), w[ids[2:]].sum(0)])
    torch.testing.assert_close(m(kjt)["f"], bags @ m.maps["f"].weight.t())
    with pytest.raises(tables.BudgetError):
        tables.build("lowrank", specs, 16, 64)


@pytest.mark.parametrize("fmt", ["lists", "ratings", "criteo"])
def test_the_sweep_runs_end_to_end_on_a_tiny_file(tmp_path, fmt):
    path = tmp_path / "data"
    {"lists": write_lists, "ratings": write_ratings, "criteo": write_criteo}[fmt](path)
    out = tmp_path / "out"
    model = "dlrm" if fmt == "criteo" else "mf"
    argv = ["--model", model, "--format", fmt, "--data", str(path), "--factors", "2,4", "--dim", "8",
            "--epochs", "1", "--max-steps", "2", "--batch-size", "64", "--lrs", "0.01,0.03",
            "--seeds", "0,1", "--large", "50", "--eval-users", "20", "--out", str(out)]
    assert quality.main(argv) == 0
    result = json.load(open(out / f"quality_{model}.json"))
    got = {(r["kind"], r["factor"]) for r in result["summary"]}
    for kind in tables.kinds():
        for factor in ([1.0] if kind == "full" else [2.0, 4.0]):
            failed = [r for r in result["runs"] if (r["kind"], r["factor"]) == (kind, factor) and "error" in r]
            assert (kind, factor) in got or failed, (kind, factor)
    assert all(r["seeds"] == 2 for r in result["summary"])
    assert os.path.getsize(out / f"quality_{model}.png") > 1000
