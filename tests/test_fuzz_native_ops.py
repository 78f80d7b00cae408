"""The native ops called directly with mutated arguments (Hypothesis): every call returns
or raises an exception from a `TORCH_CHECK` (RuntimeError) or torch's argument parsing;
none crashes the process or hangs.

The calls start from real ones, recorded (a TorchDispatchMode) while small hashed, QR and
dynamic collections train, evict, save and load; each example mutates one to three
arguments: a tensor's values set to extreme ints (INT64_MIN, -1, sizes, INT64_MAX...), NaN
or inf, a tensor truncated, emptied, cast, made non-contiguous or given another rank, an
int or float set to an extreme, a list shortened or lengthened. A crash fails the run;
a hang past the watchdog dumps every thread's stack and ends it. Out-of-bounds accesses
that do not crash are what `scripts/sanitize.sh` (this file under ASan + UBSan) reports.

A mutated size (a capacity of 2^40, a batch of INT64_MAX bags) asks the allocator for
more than the machine has; the calls run with the address space capped a few GiB above
what the process holds, so such a request fails (RuntimeError) instead of being granted
under overcommit and killing the process when touched. (Under AddressSanitizer, which
reserves terabytes of shadow memory, sanitize.sh caps single allocations instead.)

A hash index whose slot_rows hold kSlotBusy (-3, "an inserter is publishing") makes a
lookup wait for that inserter, by design (concurrent inserts); that value is not drawn.
"""

import contextlib
import faulthandler
import functools
import os
import resource
import sys

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sample_tables import hashed_tables, kjt, qr_tables
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from torchrec_ext import (
    DynamicEmbeddingBagCollection,
    DynamicEmbeddingBagConfig,
    HashedEmbeddingBagCollection,
    HashedEmbeddingBagConfig,
    QREmbeddingBagCollection,
)
from torchrec_ext.eviction import LFUEviction
from torchrec_ext.ops import hashed_bag

EXAMPLES = 150  # per op
WATCHDOG_S = 300
EXTREME_INTS = [-(2**63), -(2**31) - 1, -2, -1, 0, 1, 2, 7, 2**31, 2**40, 2**62, 2**63 - 1]
EXTREME_FLOATS = [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e30]
ACCEPTED = (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "torchrec_ext":
            copy = tree_unflatten([a.detach().clone() if isinstance(a, torch.Tensor) else a
                                   for a in tree_flatten((args, kwargs))[0]], tree_flatten((args, kwargs))[1])
            calls = self.calls.setdefault(func._schema.name.split("::")[1], [])
            if len(calls) < 3:
                calls.append((func, copy))
        return func(*args, **kwargs)


def _train(coll, steps=3, weighted=False):
    for s in range(steps):
        g = torch.Generator().manual_seed(s)
        values = torch.randint(0, 300, (8,), generator=g)
        batch = kjt(values=values.tolist())
        if weighted:
            batch = type(batch).from_lengths_sync(keys=batch.keys(), values=batch.values(),
                                                   lengths=batch.lengths(), weights=torch.rand(8, generator=g))
        coll(batch).values().sum().backward()


@functools.lru_cache(maxsize=1)
def recorded_calls():
    rec = _Recorder()
    with rec:
        _train(HashedEmbeddingBagCollection(hashed_tables()))
        _train(HashedEmbeddingBagCollection(
            [HashedEmbeddingBagConfig(name="w", num_embeddings=500, embedding_dim=8,
                                      feature_names=["a", "b", "shared"], signed=True)], is_weighted=True),
            weighted=True)
        _train(QREmbeddingBagCollection(qr_tables()))
        cfg = HashedEmbeddingBagConfig(name="k", num_embeddings=500, embedding_dim=8)
        from torchrec_ext.modules.hashed import shard_layout

        w = torch.randn(cfg.buffer_rows, 8)
        ids, offsets = torch.tensor([1, 5, 400, 7]), torch.tensor([0, 1, 4])
        lay = shard_layout(cfg).args()
        _, positions = torch.ops.torchrec_ext.hashed_bags_forward_keep([w], ids, offsets, None, [0, 2], [0], lay)
        torch.ops.torchrec_ext.hashed_bags_sgd_([w], [torch.randn(2, 8)], ids, offsets, None, [0, 2], [0], lay,
                                                0.1, False, positions)
        hashed_bag(w, ids, offsets, None, 0, shard_layout(cfg))
        dyn = DynamicEmbeddingBagCollection(
            [DynamicEmbeddingBagConfig(name="d", num_embeddings=100, embedding_dim=4,
                                       feature_names=["a", "b", "shared"], block_size=8, max_capacity=24,
                                       eviction=LFUEviction(), on_full="reject")],
            fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.1})
        _train(dyn, steps=4)
        state = dyn.state_dict()
        dyn.load_state_dict(state)
        dyn.eval()
        dyn(kjt())
        plain = DynamicEmbeddingBagCollection(
            [DynamicEmbeddingBagConfig(name="p", num_embeddings=100, embedding_dim=4,
                                       feature_names=["a", "b", "shared"], block_size=8)])
        _train(plain)
        plain.embedding_bags["p"].rows.erase(torch.arange(0, 300, 3))
    return rec.calls


def test_the_workload_reaches_every_op():
    schemas = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas()
               if s.name.startswith("torchrec_ext::")}
    missing = schemas - set(recorded_calls())
    assert not missing, f"no recorded call of {sorted(missing)}: extend the workload"


def _mutate_tensor(draw, t):
    how = draw(st.sampled_from(["values", "truncate", "empty", "dtype", "strided", "rank", "grow"]))
    if how == "values" and t.numel():
        t = t.clone()
        idx = draw(st.lists(st.integers(0, t.numel() - 1), min_size=1, max_size=4))
        flat = t.view(-1)
        for i in idx:
            if t.is_floating_point():
                flat[i] = draw(st.sampled_from(EXTREME_FLOATS))
            elif t.dtype == torch.bool:
                flat[i] = not bool(flat[i])
            else:
                info = torch.iinfo(t.dtype)
                v = draw(st.sampled_from(EXTREME_INTS + [t.numel(), t.numel() - 1]))
                flat[i] = min(max(v, info.min), info.max)
        return t
    if how == "truncate" and t.dim() and t.shape[0]:
        return t[: draw(st.integers(0, t.shape[0] - 1))]
    if how == "empty":
        return t.new_empty((0,) * max(t.dim(), 1))
    if how == "dtype":
        return t.to(draw(st.sampled_from([torch.int32, torch.int64, torch.float32, torch.float64, torch.bool])))
    if how == "strided" and t.dim() and t.shape[0] > 1:
        return t.t() if t.dim() == 2 else t[::2]
    if how == "rank":
        return t.unsqueeze(0) if draw(st.booleans()) or t.dim() == 0 else t.reshape(-1)
    if how == "grow" and t.dim():
        return torch.cat([t, t[:1]]) if t.shape[0] else t
    return t


@st.composite
def mutated(draw, call):
    func, (args, kwargs) = call
    leaves, spec = tree_flatten((args, kwargs))
    # lists are leaves of their own for the length mutations
    arg_list = list(args)
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(arg_list) - 1))
        a = arg_list[pos]
        if isinstance(a, torch.Tensor):
            arg_list[pos] = _mutate_tensor(draw, a)
        elif isinstance(a, bool):
            arg_list[pos] = not a
        elif isinstance(a, int):
            arg_list[pos] = draw(st.sampled_from(EXTREME_INTS + [a - 1, a + 1]))
        elif isinstance(a, float):
            arg_list[pos] = draw(st.sampled_from(EXTREME_FLOATS))
        elif isinstance(a, (list, tuple)) and a:
            a = list(a)
            how = draw(st.sampled_from(["drop", "dup", "element"]))
            if how == "drop":
                a.pop(draw(st.integers(0, len(a) - 1)))
            elif how == "dup":
                a.append(a[draw(st.integers(0, len(a) - 1))])
            else:
                i = draw(st.integers(0, len(a) - 1))
                if isinstance(a[i], torch.Tensor):
                    a[i] = _mutate_tensor(draw, a[i])
                elif isinstance(a[i], float):
                    a[i] = draw(st.sampled_from(EXTREME_FLOATS))
                elif isinstance(a[i], int):
                    a[i] = draw(st.sampled_from(EXTREME_INTS + [a[i] - 1, a[i] + 1]))
            arg_list[pos] = a
    # fresh copies of the untouched tensors, so in-place ops never write the recording
    fresh = [x.clone() if isinstance(x, torch.Tensor) else
             [y.clone() if isinstance(y, torch.Tensor) else y for y in x] if isinstance(x, list) else x
             for x in arg_list]
    return func, fresh, kwargs


@contextlib.contextmanager
def address_space_cap(headroom=4 * 2**30):
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        held = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (held + headroom, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(autouse=True)
def no_hang():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


OPS = ["hashed_bags_forward", "hashed_bags_forward_keep", "hashed_bags_backward", "hashed_bags_sgd_",
       "coord_uniform_", "qr_bags_forward", "qr_bags_backward", "hash_index_find", "hash_index_lookup_",
       "hash_index_insert_", "hash_index_erase_", "hash_index_rehash", "dynamic_key_hash",
       "dynamic_bags_forward", "dynamic_bags_backward", "dynamic_bags_sgd_", "block_rows_gather",
       "block_rows_scatter_", "block_rows_init_"]


@pytest.mark.parametrize("op", OPS)
def test_mutated_calls_raise_cleanly(op):
    calls = recorded_calls()[op]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(calls).flatmap(mutated))
    def run(case):
        func, args, kwargs = case
        try:
            with address_space_cap():
                func(*args, **kwargs)
        except ACCEPTED:
            pass

    run()
