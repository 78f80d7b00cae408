"""How the sharding layer holds and serves each family of table kinds.

A lookup kernel holds the local shards of its tables (all of one form: TorchRec groups
tables into kernels by kernel group). A form says how to build a shard, which shards
batch together, what serves a batch, and the kernel's fused optimizer. Forms register per
`TableKind` class; `shard_form(kind)` walks the kind's MRO, so every `FixedStateKind`
(a user's own included) gets the fixed-state form, and dynamic tables theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, List, Mapping, Sequence

from torch import nn

from torchrec_ext.modules.table_kind import TableKind


@dataclass(frozen=True)
class ShardForm:
    """local_shard(table, config, pooling, device, sharding_type) -> the shard module
    (with `num_features`, `weights`, `pieces`, `table_name`, `optimizer`).
    batch_key(shard): shards with equal keys, side by side, are served by one batch.
    batch(shards): serves them; `.forward(values, offsets, psw, batch, fused)` returns one
    pooled [bags, cols] per shard, `.num_features` counts their features.
    fused_optimizer(shards, fused_params, where): the kernel's in-backward optimizer,
    attached to the shards."""

    local_shard: Callable[..., nn.Module]
    batch_key: Callable[[nn.Module], Hashable]
    batch: Callable[[Sequence[nn.Module]], Any]
    fused_optimizer: Callable[[Sequence[nn.Module], Mapping[str, Any], str], Any]


_FORMS: Dict[type, ShardForm] = {}


def register_shard_form(kind_type: type, form: ShardForm) -> None:
    """Serves tables whose kind is a `kind_type` (or a subclass) with `form`."""
    if not (isinstance(kind_type, type) and issubclass(kind_type, TableKind)):
        raise TypeError(f"register_shard_form: {kind_type!r} is not a TableKind class")
    _FORMS[kind_type] = form


def shard_form(kind: TableKind) -> ShardForm:
    for cls in type(kind).__mro__:
        form = _FORMS.get(cls)
        if form is not None:
            return form
    raise TypeError(f"no shard form is registered for table kind {type(kind).__name__} "
                    "(subclass FixedStateKind, or see torchrec_ext.sharding.shard_forms)")


def shard_bags(shards: Sequence[nn.Module], batch: int) -> List[int]:
    """table_bags of a batch: shard t owns bags [ends[t], ends[t + 1]) of the KJT's offsets."""
    ends = [0]
    for s in shards:
        ends.append(ends[-1] + s.num_features * batch)
    return ends


def batch_shards(shards: Sequence[nn.Module], form: ShardForm, batching: bool) -> list:
    """The kernel's shards in order, each run of shards with one batch key served as one
    batch, or with batching off, each shard as a batch of its own."""
    out: list = []
    run: List[nn.Module] = []
    for s in list(shards) + [None]:
        if run and (s is None or form.batch_key(s) != form.batch_key(run[0])):
            out.extend([form.batch(run)] if batching else [form.batch([r]) for r in run])
            run = []
        if s is not None:
            run.append(s)
    return out
