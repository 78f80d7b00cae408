"""A dynamic table shared by threads that look ids up (inserting), evict and take state
dicts at once: one row per key, every snapshot consistent (each key with its own row),
the statistics add up, and no row lost that was not evicted. No update runs, so every
row still holds its key's initial vector, a function of the key alone: a snapshot that
pairs a key with another key's row shows."""

import threading

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ext import DynamicEmbeddingBagCollection, DynamicEmbeddingBagConfig
from torchrec_ext.eviction import LFUEviction, TTLEviction
from torchrec_ext.modules.dynamic_rows import KeyedRows

DIM = 8


def kjt(ids):
    return KeyedJaggedTensor.from_lengths_sync(keys=["f"], values=ids, lengths=torch.ones(ids.numel(), dtype=torch.long))


def initial_rows(cfg, keys):
    """Each key's initial vector, from a table built alone in one thread."""
    ref = DynamicEmbeddingBagCollection(tables=[DynamicEmbeddingBagConfig(
        name=cfg.name, num_embeddings=cfg.num_embeddings, embedding_dim=DIM, feature_names=["f"],
        seed=cfg.seed, initializer=cfg.initializer)])
    return ref(kjt(keys)).to_dict()["f"]


def entries(state):
    out = [v for k, v in state.items() if isinstance(v, KeyedRows)]
    assert out
    keys = torch.cat([e.keys for e in out])
    values = torch.cat([e.values for e in out])
    return keys, values


def run_threads(cfg, rounds=60, batch=400, key_space=6000):
    coll = DynamicEmbeddingBagCollection(tables=[cfg])
    errors, seen, snapshots = [], [], []
    stop = threading.Event()

    def guard(fn):
        def run():
            try:
                fn()
            except Exception as e:  # reported by the test
                errors.append(e)
                stop.set()
        return run

    def writer(seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(rounds):
            if stop.is_set():
                return
            ids = torch.randint(0, key_space, (batch,), generator=g)
            seen.append(ids)
            out = coll(kjt(ids)).to_dict()["f"]
            assert out.shape == (batch, DIM)

    def saver():
        while not stop.is_set():
            snapshots.append(entries(coll.state_dict()))

    def evictor():
        while not stop.is_set():
            coll.evict()

    workers = [threading.Thread(target=guard(lambda s=s: writer(s))) for s in (1, 2)]
    others = [threading.Thread(target=guard(saver)), threading.Thread(target=guard(evictor))]
    for t in workers + others:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    for t in others:
        t.join()
    assert not errors, errors
    return coll, torch.cat(seen), snapshots


def check(coll, seen, snapshots, cfg):
    name = cfg.name
    keys, values = entries(coll.state_dict())
    assert keys.unique().numel() == keys.numel()  # one row per key
    stats = coll.stats(name)
    assert len(keys) == coll.table_size(name) == stats["admitted"] - stats["evicted"]
    if cfg.max_capacity:
        assert len(keys) <= cfg.max_capacity
    # no row lost that was not evicted
    rows = coll._tables[0].rows
    evicted = torch.cat([k for _, k in rows.eviction_log]) if rows.eviction_log else torch.empty(0, dtype=torch.long)
    lost = seen.unique()[~torch.isin(seen.unique(), keys) & ~torch.isin(seen.unique(), evicted)]
    assert lost.numel() == 0, lost[:10]
    torch.testing.assert_close(values, initial_rows(cfg, keys), rtol=0, atol=0)
    assert len(snapshots) >= 3
    for snap_keys, snap_values in snapshots[:: max(1, len(snapshots) // 8)]:
        assert snap_keys.unique().numel() == snap_keys.numel()
        torch.testing.assert_close(snap_values, initial_rows(cfg, snap_keys), rtol=0, atol=0)


def test_lookups_ttl_eviction_and_state_dicts_in_threads_keep_every_row():
    cfg = DynamicEmbeddingBagConfig(name="t", num_embeddings=6000, embedding_dim=DIM, feature_names=["f"],
                                    block_size=512, eviction=TTLEviction(steps=3))
    check(*run_threads(cfg), cfg=cfg)


def test_lookups_at_capacity_with_lfu_and_state_dicts_in_threads_keep_every_row():
    cfg = DynamicEmbeddingBagConfig(name="t", num_embeddings=6000, embedding_dim=DIM, feature_names=["f"],
                                    block_size=512, max_capacity=2500, eviction=LFUEviction())
    check(*run_threads(cfg), cfg=cfg)
