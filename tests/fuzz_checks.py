"""The checks shared by the fuzz tests: what a collection must do with one batch.

`check(coll, cfgs, batch, weighted)`: a valid batch (tests/fuzz_inputs.py's oracle) gives
the independent reference's output (hashed_reference / qr_reference, or for a dynamic
table its own rows read back from the state dict); an invalid one raises a ValueError or
TypeError naming a table or feature and leaves every stored tensor as it was.
"""

import hashed_reference
import qr_reference
import torch
from fuzz_inputs import problems
from torchrec import PoolingType
from torchrec.modules.embedding_modules import get_embedding_names_by_table

from torchrec_ext import DynamicEmbeddingBagConfig, HashedEmbeddingBagConfig, QREmbeddingBagConfig
from torchrec_ext.modules.dynamic_rows import KeyedRows


def id_bound(cfgs):
    """The ids every feature's tables accept: [0, min num_embeddings) (None: any int64)."""
    if isinstance(cfgs[0], DynamicEmbeddingBagConfig):
        return None
    return min(c.num_embeddings for c in cfgs)


def snapshot(coll):
    """Everything the collection stores, as plain tensors (KeyedRows flattened)."""
    out = {}
    for k, v in coll.state_dict().items():
        if isinstance(v, KeyedRows):
            order = torch.argsort(v.keys)
            out[k + ".keys"] = v.keys[order].clone()
            out[k + ".values"] = v.values[order].clone()
        else:
            out[k] = v.clone()
    return out


def assert_same_state(before, after):
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed by a rejected batch"


def dynamic_rows(coll, cfg, ids):
    """Each id's row from the state dict; an id the table does not hold reads the
    initializer's eval value (eval mode)."""
    entries = [v for k, v in coll.state_dict().items() if k.startswith(f"embedding_bags.{cfg.name}.")
               and isinstance(v, KeyedRows)]
    keys = torch.cat([e.keys for e in entries]).tolist()
    values = torch.cat([e.values for e in entries]).float()
    index = {k: i for i, k in enumerate(keys)}
    missing = torch.full((cfg.embedding_dim,), float(cfg.initializer.eval_value))
    return torch.stack([values[index[i]] if i in index else missing for i in ids]) if ids else \
        torch.zeros(0, cfg.embedding_dim)


def reference(coll, cfgs, batch, weighted):
    """The pooled output per embedding name, from the reference of each kind."""
    kjt = batch.kjt()
    names_by_table = get_embedding_names_by_table(cfgs)
    if batch.batch_size == 0:  # (KJT.to_dict cannot split an empty batch)
        return {n: torch.zeros(0, c.embedding_dim) for c, names in zip(cfgs, names_by_table) for n in names}
    d = kjt.to_dict()
    out = {}
    for cfg, names in zip(cfgs, names_by_table):
        for f, name in zip(cfg.feature_names, names):
            jt = d[f]
            ids, offsets = jt.values().long(), jt.offsets().long()
            psw = jt.weights().float() if weighted else None
            mean = cfg.pooling == PoolingType.MEAN
            ws = coll.table_weights(cfg.name) if not isinstance(cfg, DynamicEmbeddingBagConfig) else None
            if isinstance(cfg, HashedEmbeddingBagConfig):
                out[name] = hashed_reference.pooled(cfg, ws[0].detach(), ids.numpy(), offsets, psw, mean)
            elif isinstance(cfg, QREmbeddingBagConfig):
                out[name] = qr_reference.pooled(cfg, [w.detach() for w in ws], ids, offsets, psw, mean)
            else:
                rows = dynamic_rows(coll, cfg, ids.tolist())
                if psw is not None:
                    rows = rows * psw[:, None]
                lengths = offsets[1:] - offsets[:-1]
                bag = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
                pooled = torch.zeros(lengths.numel(), cfg.embedding_dim).index_add(0, bag, rows)
                out[name] = pooled / lengths.clamp(min=1)[:, None] if mean else pooled
    return out


def check(coll, cfgs, batch, weighted):
    """One batch: the reference output, or a clean error naming a table and no change."""
    features = [f for c in cfgs for f in c.feature_names]
    expect_problems = problems(batch, features, id_bound(cfgs), weighted)
    before = snapshot(coll)
    try:
        out = coll(batch.kjt())
    except (ValueError, TypeError) as e:
        assert expect_problems, f"valid batch rejected: {e}\n{batch}"
        names = [c.name for c in cfgs] + features
        assert any(f"'{n}'" in str(e) for n in names), f"error names no table or feature: {e}"
        assert_same_state(before, snapshot(coll))
        return
    assert not expect_problems, f"batch breaking {expect_problems} was accepted\n{batch}"
    with torch.no_grad():
        expect = reference(coll, cfgs, batch, weighted)
    got = out.to_dict()
    assert got.keys() == expect.keys()
    for k in got:
        assert got[k].shape == (batch.batch_size, expect[k].shape[1])
        torch.testing.assert_close(got[k].float(), expect[k].float(), rtol=1e-4, atol=1e-4)
    if not coll.training or not isinstance(cfgs[0], DynamicEmbeddingBagConfig):
        assert_same_state(before, snapshot(coll))  # forward stores nothing
