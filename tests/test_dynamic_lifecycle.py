"""Dynamic tables' lifecycle: admission, eviction, per-row optimizers, deltas, statistics.

References: Python simulations of each policy over random streams, torch.optim on a dense
nn.EmbeddingBag (SGD, Adagrad), a plain-PyTorch FBGEMM formula (row-wise Adagrad, Adam with
per-row steps), and the table's own state before and after."""

import math

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext import DynamicEmbeddingBagCollection, DynamicEmbeddingBagConfig
from torchrec_ext.admission import AdmissionPolicy, FrequencyAdmission, ProbabilisticAdmission
from torchrec_ext.eviction import EvictionPolicy, L2NormEviction, LFUEviction, LRUEviction, TTLEviction
from torchrec_ext.initializers import Constant, Normal, Uniform
from torchrec_ext.modules.dynamic_rows import KeyedRows

LR = 0.1


def table(fused=None, name="t", dim=4, **kw):
    cfg = DynamicEmbeddingBagConfig(name=name, num_embeddings=100, embedding_dim=dim, feature_names=["f"],
                                    block_size=8, **kw)
    return DynamicEmbeddingBagCollection([cfg], fused_params=fused)


def kjt(ids, lengths=None):
    ids = torch.as_tensor(ids, dtype=torch.long)
    lengths = torch.ones(ids.numel(), dtype=torch.long) if lengths is None else torch.as_tensor(lengths)
    return KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=ids, lengths=lengths)


def step(coll, ids, lengths=None, grad_seed=None):
    out = coll(kjt(ids, lengths)).values()
    if grad_seed is not None:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
        (out * g).sum().backward()
    return out


def rows_of(coll, name="t"):
    """key -> (values, optimizer state, metadata) from the state dict."""
    out = {}
    for k, v in coll.state_dict().items():
        if isinstance(v, KeyedRows) and k.startswith(f"embedding_bags.{name}."):
            for i, key in enumerate(v.keys.tolist()):
                out[key] = (v.values[i], {n: s[i] for n, s in v.optimizer.items()},
                            {n: int(m[i]) for n, m in v.metadata.items()})
    return out


# ---------------------------------------------------------------- admission
def test_exact_frequency_admission_inserts_an_id_at_its_nth_sighting():
    coll = table(fused={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 1.0},
                 admission=FrequencyAdmission(3), initializer=Constant(0.5))
    for seen in range(1, 6):  # 7 every step; 8 on steps 1-2; 9 on steps 3-5
        out = step(coll, [7, 8 if seen < 3 else 9], grad_seed=seen)
        held = set(coll.keys("t").tolist())
        assert (7 in held) == (seen >= 3), seen
        assert (9 in held) == (seen >= 5), seen
        if seen < 3:  # not admitted: training reads the initializer value
            torch.testing.assert_close(out, torch.full((2, 4), 0.5))
    assert 8 not in held and coll.stats("t")["admitted"] == 2
    # counts add up within a batch: two sightings, then one more admits
    coll2 = table(admission=FrequencyAdmission(3))
    step(coll2, [5, 5])
    assert coll2.table_size("t") == 0
    step(coll2, [5])
    assert coll2.keys("t").tolist() == [5]


def test_a_rejected_id_gets_no_update():
    coll = table(fused={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 1.0},
                 admission=FrequencyAdmission(2), initializer=Normal(0.0, 0.1))
    step(coll, [42], grad_seed=1)  # first sighting: no row, the gradient goes nowhere
    out = step(coll, [42])  # second sighting: admitted with its pure initial value
    fresh = table(initializer=Normal(0.0, 0.1))
    torch.testing.assert_close(out, step(fresh, [42]))


def test_sketch_admission_is_never_late_and_rarely_early():
    torch.manual_seed(0)
    threshold, delta = 4, 0.01
    coll = table(admission=FrequencyAdmission(threshold, counter="sketch", epsilon=1e-4, delta=delta))
    counts = torch.randint(1, 7, (1000,))
    stream = torch.repeat_interleave(torch.arange(1000) * 7919, counts)
    stream = stream[torch.randperm(stream.numel())]
    for chunk in stream.split(100):
        step(coll, chunk)
    held = set(coll.keys("t").tolist())
    frequent = {k for k, c in zip((torch.arange(1000) * 7919).tolist(), counts.tolist()) if c >= threshold}
    rare = {k for k, c in zip((torch.arange(1000) * 7919).tolist(), counts.tolist()) if c < threshold}
    assert frequent <= held  # never late: the sketch over-counts
    # total count ~3500, epsilon * total < 1: an early admission needs every row to collide
    assert len(held & rare) <= 2 * delta * len(rare) + 1


def test_probabilistic_admission_is_a_function_of_id_seed_and_step():
    ids = torch.arange(2000) * 104729

    def admitted(seed):
        coll = table(admission=ProbabilisticAdmission(0.3, seed=seed))
        for _ in range(3):
            step(coll, ids)
        return set(coll.keys("t").tolist())

    a, b, c = admitted(5), admitted(5), admitted(6)
    assert a == b and a != c
    # three chances at p = 0.3 each: 1 - 0.7^3 = 0.657 of the ids
    assert abs(len(a) / 2000 - (1 - 0.7**3)) < 0.04


def test_admission_policies_can_be_user_defined():
    class EvenIds(AdmissionPolicy):
        def admit(self, keys, counts, step):
            return keys % 2 == 0

    coll = table(admission=EvenIds())
    step(coll, [1, 2, 3, 4])
    assert coll.keys("t").tolist() == [2, 4] and coll.stats("t")["rejected"] == 2


# ---------------------------------------------------------------- eviction
class Reference:
    """A Python model of a table's lifecycle: admit all, evict by a policy."""

    def __init__(self, capacity=None, ttl=None, interval=0, policy=None):
        self.rows = {}  # key -> dict(created, last_seen, count)
        self.capacity, self.ttl, self.interval, self.policy = capacity, ttl, interval, policy

    def batch(self, step, ids):
        if self.ttl is not None and self.interval and step % self.interval == 0:
            for k in [k for k, r in self.rows.items() if r["last_seen"] < step - self.ttl]:
                del self.rows[k]
        present = {k for k in ids if k in self.rows}
        new = sorted({k for k in ids if k not in self.rows})
        if self.capacity is not None and len(self.rows) + len(new) > self.capacity:
            need = len(self.rows) + len(new) - self.capacity
            order = sorted((k for k in self.rows if k not in present), key=lambda k: self.score(k, step))
            for k in order[:need]:
                del self.rows[k]
        for k in new:
            self.rows[k] = {"created": step, "last_seen": step, "count": 0}
        for k in ids:
            self.rows[k]["last_seen"] = step
            self.rows[k]["count"] += 1

    def score(self, k, step):
        r = self.rows[k]
        if self.policy == "lru":
            return (r["last_seen"], r["created"], k)
        return (r["count"], r["last_seen"], k)


@pytest.mark.parametrize("policy", ["ttl", "lru", "lfu"])
def test_eviction_matches_a_python_reference_over_a_random_stream(policy):
    g = torch.Generator().manual_seed({"ttl": 1, "lru": 2, "lfu": 3}[policy])
    if policy == "ttl":
        coll, ref = table(eviction=TTLEviction(3), eviction_interval=2), Reference(ttl=3, interval=2)
    else:
        cls = LRUEviction if policy == "lru" else LFUEviction
        coll, ref = table(max_capacity=40, eviction=cls()), Reference(capacity=40, policy=policy)
    for s in range(60):
        ids = (torch.randint(0, 80, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g) ** 2).tolist()
        step(coll, ids)
        ref.batch(s, ids)
        assert set(coll.keys("t").tolist()) == set(ref.rows), s
    meta = rows_of(coll)
    for k, r in ref.rows.items():
        assert meta[k][2]["last_seen"] == r["last_seen"] and meta[k][2]["count"] == r["count"]
    assert coll.stats("t")["evicted"] > 0


def test_l2_norm_eviction_removes_small_rows_on_demand():
    coll = table(eviction=L2NormEviction(0.5), initializer=Uniform(-0.5, 0.5))
    step(coll, torch.arange(500))
    before = rows_of(coll)
    removed = coll.evict("t")
    small = {k for k, (v, _, _) in before.items() if float(v.norm()) < 0.5}
    assert removed == len(small) > 0 and set(coll.keys("t").tolist()) == set(before) - small


def test_a_reused_slot_starts_with_fresh_optimizer_state():
    coll = table(fused={"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": LR},
                 max_capacity=2, eviction=LRUEviction())
    step(coll, [1, 2], grad_seed=1)
    assert float(rows_of(coll)[1][1]["sum"].abs().sum()) > 0
    step(coll, [3])  # evicts key 1 (least recent), 3 takes its slot
    assert set(coll.keys("t").tolist()) == {2, 3}
    state = rows_of(coll)[3][1]["sum"]
    assert float(state.abs().sum()) == 0
    assert rows_of(coll)[3][2]["count"] == 1


def test_lfu_keeps_the_most_frequent_ids_of_a_stream_ten_times_its_capacity():
    capacity = 100
    coll = table(max_capacity=capacity, eviction=LFUEviction(), initializer=Constant(0.0))
    g = torch.Generator().manual_seed(0)
    universe = torch.arange(10 * capacity) * 31337
    weights = 1.0 / torch.arange(1, universe.numel() + 1).double() ** 1.2  # Zipf
    draws = universe[torch.multinomial(weights, 40_000, replacement=True, generator=g)]
    for chunk in draws.split(50):
        step(coll, chunk)
        assert coll.table_size("t") <= capacity
    freq = torch.bincount(torch.searchsorted(universe, draws), minlength=universe.numel())
    ranked = universe[torch.argsort(freq, descending=True)].tolist()
    held = set(coll.keys("t").tolist())
    assert set(ranked[:40]) <= held  # the most frequent ids all stay
    assert sum(k in held for k in ranked[:capacity]) >= 0.75 * capacity
    s = coll.stats("t")
    assert s["size"] == capacity and s["capacity"] == capacity and s["evicted"] > 0 and s["load"] == 1.0


@pytest.mark.parametrize("eviction", [None, LFUEviction()])
def test_a_batch_beyond_capacity_raises_or_rejects_the_least_frequent(eviction):
    from torchrec_ext.modules.dynamic.hash_table import TableFullError
    fused = {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 1.0}
    raising = table(fused=fused, max_capacity=4, eviction=eviction, initializer=Normal(0.0, 0.1))
    step(raising, [1, 2], grad_seed=0)
    with pytest.raises(TableFullError, match="'t' is full"):
        step(raising, [10, 11, 12, 13, 14, 15, 1])
    assert set(raising.keys("t").tolist()) == {1, 2}  # nothing inserted, nothing lost
    rejecting = table(fused=fused, max_capacity=4, eviction=eviction, initializer=Normal(0.0, 0.1),
                      on_full="reject")
    step(rejecting, [1, 2], grad_seed=0)
    before = rows_of(rejecting)
    batch = [12, 10, 12, 13, 11, 13, 12, 14, 15, 1]  # counts: 12 x3, 13 x2, then 10, 11, 14, 15 once
    out = step(rejecting, batch, grad_seed=1)
    # Without eviction 2 rows are free: 12 and 13, the most frequent. With LFU every row but
    # 1's (the batch uses it) can go, so 3 new ids fit: 12, 13, then 10, the smallest of the ties.
    want = {1, 2, 12, 13} if eviction is None else {1, 12, 13, 10}
    assert set(rejecting.keys("t").tolist()) == want
    fresh = table(initializer=Normal(0.0, 0.1))
    for pos, key in enumerate(batch):
        if key in before:  # an old row reads its trained value
            torch.testing.assert_close(out[pos], before[key][0])
        else:  # a new id reads its initial value, with a row or without
            torch.testing.assert_close(out[pos], step(fresh, [key])[0])
    after = rows_of(rejecting)
    for key in (14, 15, 11) if eviction is not None else (10, 11, 14, 15):
        assert key not in after  # rejected: no row, its gradient went nowhere
    assert rejecting.stats("t")["rejected"] >= 3
    with pytest.raises(ValueError, match="dynamic table 't': on_full"):
        table(on_full="drop")


def test_user_defined_eviction_scores():
    class DropOddKeysFirst(EvictionPolicy):
        capacity_bound = True

        def scores(self, rows, step):
            return (rows.keys % 2 == 0).double()

    coll = table(max_capacity=4, eviction=DropOddKeysFirst())
    step(coll, [1, 2, 3, 4])
    step(coll, [6, 8])
    assert set(coll.keys("t").tolist()) == {2, 4, 6, 8}


# ---------------------------------------------------------------- optimizers
def dense_reference(kind, weight, batches, grads):
    """nn.EmbeddingBag over the same rows, trained with torch.optim or FBGEMM's formula."""
    bag = nn.EmbeddingBag(weight.shape[0], weight.shape[1], mode="sum")
    bag.weight.data.copy_(weight)
    opt = {"sgd": lambda: torch.optim.SGD([bag.weight], lr=LR),
           "adagrad": lambda: torch.optim.Adagrad([bag.weight], lr=LR, eps=1e-8)}.get(kind, lambda: None)()
    m = torch.zeros_like(weight)
    v = torch.zeros_like(weight)
    steps = torch.zeros(weight.shape[0], 1)
    momentum = torch.zeros(weight.shape[0], 1)
    for idx, g in zip(batches, grads):
        bag.weight.grad = None
        (bag(idx, torch.arange(idx.numel())) * g).sum().backward()
        grad = bag.weight.grad
        if opt is not None:
            opt.step()
            continue
        touched = grad.abs().sum(dim=1) > 0
        with torch.no_grad():
            if kind == "rowwise_adagrad":
                momentum[touched] += grad[touched].pow(2).mean(dim=1, keepdim=True)
                bag.weight[touched] -= LR * grad[touched] / (momentum[touched].sqrt() + 1e-8)
            else:  # adam, FBGEMM: per-row step, only touched rows
                steps[touched] += 1
                m[touched] = 0.9 * m[touched] + 0.1 * grad[touched]
                v[touched] = 0.999 * v[touched] + 0.001 * grad[touched] ** 2
                mh = m[touched] / (1 - 0.9 ** steps[touched])
                vh = v[touched] / (1 - 0.999 ** steps[touched])
                bag.weight[touched] -= LR * mh / (vh.sqrt() + 1e-8)
    state = {"adagrad": lambda: {"sum": opt.state[bag.weight]["sum"]},
             "rowwise_adagrad": lambda: {"momentum1": momentum},
             "adam": lambda: {"exp_avg": m, "exp_avg_sq": v, "step": steps},
             "sgd": lambda: {}}[kind]()
    return bag.weight.detach(), state


OPTIMIZERS = {"sgd": EmbOptimType.EXACT_SGD, "adagrad": EmbOptimType.EXACT_ADAGRAD,
              "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "adam": EmbOptimType.ADAM}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_fused_optimizers_match_a_dense_reference_over_several_steps(kind):
    coll = table(fused={"optimizer": OPTIMIZERS[kind], "learning_rate": LR}, dim=6)
    keys = torch.tensor([-5, 3, 10**12, 77, 8])
    step(coll, keys)  # creates the rows
    weight = torch.stack([rows_of(coll)[k][0] for k in keys.tolist()])
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 5, (9,), generator=g) for _ in range(4)]  # repeats, rows skipped
    grads = [torch.randn(9, 6, generator=g) for _ in range(4)]
    for idx, gr in zip(batches, grads):
        out = coll(kjt(keys[idx])).values()
        (out * gr).sum().backward()
    expect_w, expect_state = dense_reference(kind, weight, batches, grads)
    got = rows_of(coll)
    for i, k in enumerate(keys.tolist()):
        torch.testing.assert_close(got[k][0], expect_w[i], rtol=1e-5, atol=1e-6)
        for name, value in expect_state.items():
            torch.testing.assert_close(got[k][1][name], value[i].float(), rtol=1e-5, atol=1e-7)


def test_learning_rate_changes_through_the_fused_optimizer():
    coll = table(fused={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 1.0}, initializer=Constant(0.0))
    coll.fused_optimizer.param_groups[0]["lr"] = 0.25
    out = coll(kjt([1])).values()
    out.sum().backward()
    torch.testing.assert_close(rows_of(coll)[1][0], torch.full((4,), -0.25))
    assert coll.fused_optimizer.param_groups[0]["lr"] == 0.25


def test_gradients_averaged_per_id():
    summed = table(fused={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 1.0}, initializer=Constant(0.0))
    averaged = table(fused={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 1.0}, initializer=Constant(0.0),
                     grad_reduce_by="id")
    for coll in (summed, averaged):
        coll(kjt([4, 4, 4, 5])).values().sum().backward()
    torch.testing.assert_close(rows_of(summed)[4][0], torch.full((4,), -3.0))
    torch.testing.assert_close(rows_of(averaged)[4][0], torch.full((4,), -1.0))
    torch.testing.assert_close(rows_of(averaged)[5][0], torch.full((4,), -1.0))


# ---------------------------------------------------------------- checkpoints and deltas
def lifecycle_table(name="t"):
    return table(fused={"optimizer": EmbOptimType.ADAM, "learning_rate": LR}, name=name,
                 admission=FrequencyAdmission(2), eviction=TTLEviction(4), eviction_interval=3,
                 initializer=Normal(0.0, 0.1))


def stream(s):
    g = torch.Generator().manual_seed(100 + s)
    return torch.randint(0, 30, (12,), generator=g) * 1_000_003


def assert_same_table(a, b):
    ra, rb = rows_of(a), rows_of(b)
    assert set(ra) == set(rb)
    for k in ra:
        torch.testing.assert_close(ra[k][0], rb[k][0], rtol=0, atol=0)
        for n in ra[k][1]:
            torch.testing.assert_close(ra[k][1][n], rb[k][1][n], rtol=0, atol=0)
        assert ra[k][2] == rb[k][2]


def test_checkpoint_resumes_exactly_like_an_uninterrupted_run():
    run, resumed = lifecycle_table(), lifecycle_table()
    for s in range(10):
        step(run, stream(s), grad_seed=s)
    resumed.load_state_dict(run.state_dict())  # rows, Adam state, metadata, counters, step
    assert_same_table(run, resumed)
    for s in range(10, 20):
        torch.testing.assert_close(step(resumed, stream(s), grad_seed=s), step(run, stream(s), grad_seed=s),
                                   rtol=0, atol=0)
    assert_same_table(run, resumed)
    assert run.stats("t")["evicted"] > 0 and run.stats("t")["rejected"] > 0


def test_base_plus_incremental_export_reproduces_the_table():
    live = lifecycle_table()
    for s in range(8):
        step(live, stream(s), grad_seed=s)
    base = live.state_dict()
    since = int(base["embedding_bags.t.step"])
    for s in range(8, 16):
        step(live, stream(s), grad_seed=s)
    delta = live.export_delta(since)
    assert 0 < len(delta["t"]) < live.table_size("t") + 1 and delta["t"].deleted.numel() > 0
    serving = lifecycle_table()
    serving.load_state_dict(base)
    serving.import_delta(delta)
    assert_same_table(live, serving)


def test_the_deletion_log_holds_delta_window_steps_and_older_deltas_raise():
    """The keys erased are kept for delta_window steps only (a long run's memory stays
    bounded); a delta within the window still reproduces the table, an older one raises."""
    window = 5
    live = table(fused={"optimizer": EmbOptimType.ADAM, "learning_rate": LR}, admission=FrequencyAdmission(2),
                 eviction=TTLEviction(4), eviction_interval=3, initializer=Normal(0.0, 0.1), delta_window=window)
    for s in range(30):
        step(live, stream(s), grad_seed=s)
        if s == 26:
            base = live.state_dict()
    rows = live._holder("t").rows
    assert rows.stats["evicted"] > 0
    assert all(st > rows.step - window for st, _ in rows.eviction_log)
    since = int(base["embedding_bags.t.step"])
    assert since > rows.step - window
    serving = table(admission=FrequencyAdmission(2), eviction=TTLEviction(4), eviction_interval=3,
                    initializer=Normal(0.0, 0.1), fused={"optimizer": EmbOptimType.ADAM, "learning_rate": LR})
    serving.load_state_dict(base)
    serving.import_delta(live.export_delta(since))
    assert_same_table(live, serving)
    with pytest.raises(ValueError, match="table 't'.*delta_window"):
        live.export_delta(rows.step - window - 3)
    with pytest.raises(ValueError, match="delta_window"):
        table(delta_window=0)


def test_stats_report_the_lifecycle():
    coll = table(max_capacity=5, eviction=LRUEviction(), admission=FrequencyAdmission(2))
    step(coll, [1, 2, 3, 1, 2, 3])  # each seen twice: admitted
    step(coll, [4, 5, 6, 4, 5, 6, 7])  # 3 admitted (one eviction), 7 rejected
    s = coll.stats("t")
    assert (s["size"], s["capacity"], s["admitted"], s["rejected"], s["evicted"]) == (5, 5, 6, 1, 1)
    assert math.isclose(s["load"], 1.0)


@pytest.mark.parametrize("n,k", [(1000, 10), (20000, 3000), (50, 60), (500, 500), (1, 1)])
def test_lowest_first_is_the_prefix_of_a_stable_sort(n, k):
    """The eviction order at capacity: the first k of a stable argsort (heavy ties), found
    without sorting every score."""
    from torchrec_ext.modules.dynamic.rows import lowest_first

    scores = torch.randint(0, 15, (n,), generator=torch.Generator().manual_seed(n + k)).double()
    got = lowest_first(scores, k)
    assert got.numel() >= min(k, n)
    assert torch.equal(got[:k], torch.argsort(scores, stable=True)[:k])
