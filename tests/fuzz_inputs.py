"""Random KeyedJaggedTensors for the fuzz tests (Hypothesis), and what each one should do.

`batches(features, num_embeddings)` draws a batch that may break any rule a collection
checks: missing, repeated or unknown keys; empty features and batches; negative lengths,
lengths that do not add up or come in the wrong number or dtype (int32 / int64); ids that are negative,
huge or past num_embeddings, int32 or int64 or float; weights that are missing,
misshapen, NaN / inf or not floating point; non-contiguous tensors; meta tensors.
`problems(batch, ...)` is the independent oracle: the rules the batch breaks (none: the
collection must compute it and match the reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
from hypothesis import strategies as st
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

HUGE_IDS = [2**31, 2**40, 2**62, 2**63 - 1]


@dataclass
class Batch:
    keys: List[str]
    batch_size: int
    lengths: List[int]  # feature-major, len(keys) * batch_size unless `lengths_count` breaks it
    ids: List[int]
    weights: Optional[List[float]] = None
    id_dtype: torch.dtype = torch.int64
    lengths_dtype: torch.dtype = torch.int64
    weights_dtype: torch.dtype = torch.float32
    strided: bool = False  # ids and weights as non-contiguous views
    meta: bool = False  # every tensor on the meta device
    notes: List[str] = field(default_factory=list)

    def kjt(self) -> KeyedJaggedTensor:
        dev = "meta" if self.meta else "cpu"
        ids = torch.tensor(self.ids, dtype=torch.int64).to(self.id_dtype)
        w = None if self.weights is None else torch.tensor(self.weights, dtype=torch.float64).to(self.weights_dtype)
        if self.strided:  # every other element of a tensor twice as long
            ids = torch.stack([ids, ids]).t().reshape(-1)[::2] if ids.numel() else ids
            if w is not None and w.numel():
                w = torch.stack([w, w]).t().reshape(-1)[::2]
        lengths = torch.tensor(self.lengths, dtype=torch.int64).to(self.lengths_dtype)
        return KeyedJaggedTensor(keys=list(self.keys), values=ids.to(dev), lengths=lengths.to(dev),
                                 weights=None if w is None else w.to(dev), stride=self.batch_size)


@st.composite
def batches(draw, features: Sequence[str], num_embeddings: Optional[int], bad: bool = True):
    """A batch for a collection reading `features` (ids in [0, num_embeddings); None: any
    int64 is an id). bad=False draws only valid batches."""
    keys = list(draw(st.permutations(list(features))))
    notes = []
    if bad and draw(st.integers(0, 9)) == 0:
        keys.pop(draw(st.integers(0, len(keys) - 1)))
        notes.append("missing key")
    if draw(st.booleans()):
        keys.append("unknown_feature")  # not read by any table: ignored, as TorchRec's EBC
    if bad and draw(st.integers(0, 14)) == 0:
        keys.append(keys[0])
        notes.append("repeated key")
    B = draw(st.integers(0, 4))
    lengths = draw(st.lists(st.integers(0, 4), min_size=len(keys) * B, max_size=len(keys) * B))
    if bad and lengths and draw(st.integers(0, 9)) == 0:
        lengths[draw(st.integers(0, len(lengths) - 1))] = -draw(st.integers(1, 3))
    n = max(0, sum(lengths))
    high = num_embeddings if num_embeddings is not None else 2**63
    good_ids = st.integers(0, high - 1) if num_embeddings is not None else st.integers(-(2**63), 2**63 - 1)
    ids = draw(st.lists(good_ids, min_size=n, max_size=n))
    if bad and ids and num_embeddings is not None and draw(st.integers(0, 7)) == 0:
        ids[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-1, -(2**63), num_embeddings] + HUGE_IDS))
    if bad and draw(st.integers(0, 14)) == 0:
        ids = ids + [0] if draw(st.booleans()) or not ids else ids[:-1]
        notes.append("ids do not match lengths")
    if bad and lengths and draw(st.integers(0, 19)) == 0:
        lengths = lengths[:-1]
        notes.append("lengths count")
    weights = None
    if draw(st.booleans()):
        weights = draw(st.lists(st.floats(0.1, 2.0), min_size=len(ids), max_size=len(ids)))
        if bad and weights and draw(st.integers(0, 7)) == 0:
            weights[draw(st.integers(0, len(weights) - 1))] = draw(
                st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        if bad and draw(st.integers(0, 6)) == 0:
            weights = weights + [1.0]
    id_dtype = draw(st.sampled_from([torch.int64, torch.int32] + ([torch.float32] if bad else [])))
    if id_dtype == torch.int32:  # int32 ids in range of int32
        ids = [i if -(2**31) <= i < 2**31 else i % (2**31) for i in ids]
    # (float lengths: KeyedJaggedTensor's constructor refuses them itself)
    lengths_dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    weights_dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16]
                                         + ([torch.int64] if bad else [])))
    meta = bad and draw(st.integers(0, 19)) == 0
    return Batch(keys, B, lengths, ids, weights, id_dtype, lengths_dtype, weights_dtype,
                 strided=draw(st.booleans()), meta=meta, notes=notes)


def problems(b: Batch, features: Sequence[str], num_embeddings: Optional[int], weighted: bool) -> List[str]:
    """The rules `b` breaks for a collection reading `features` (empty: it is valid)."""
    out = []
    if len(set(b.keys)) != len(b.keys):
        out.append("repeated key")
    if any(f not in b.keys for f in features):
        out.append("missing key")
    if b.id_dtype not in (torch.int32, torch.int64):
        out.append("id dtype")
    if b.lengths_dtype not in (torch.int32, torch.int64):
        out.append("lengths dtype")
    if b.meta:
        out.append("device")
    if weighted and b.weights is None:
        out.append("no weights")
    if out:
        return out
    if len(b.lengths) != len(b.keys) * b.batch_size:
        return ["lengths count"]
    if any(v < 0 for v in b.lengths):
        return ["negative length"]
    if sum(b.lengths) != len(b.ids):
        return ["ids do not match lengths"]
    if weighted:
        if b.weights_dtype not in (torch.float16, torch.float32, torch.float64):
            out.append("weights dtype")
        elif len(b.weights) != len(b.ids):
            out.append("weights count")
        elif not all(abs(w) < float("inf") for w in b.weights):
            out.append("non-finite weight")
    read = read_ids(b, features)
    if num_embeddings is not None and any(i < 0 or i >= num_embeddings for i in read):
        out.append("id out of range")
    return out


def read_ids(b: Batch, features: Sequence[str]) -> List[int]:
    """The ids of the features a collection reads (the others are never looked at)."""
    out, pos = [], 0
    for k_i, k in enumerate(b.keys):
        n = sum(b.lengths[k_i * b.batch_size:(k_i + 1) * b.batch_size])
        if k in features:
            out += b.ids[pos:pos + n]
        pos += n
    return out
