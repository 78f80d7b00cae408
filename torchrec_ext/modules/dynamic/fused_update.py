"""The fused (in-backward) optimizer of dynamic tables, unsharded and sharded alike.

The backward pass of a lookup computes the gradient of the rows the batch touched
(duplicates summed, as FBGEMM's EXACT_* optimizers do; or averaged per id when the table's
`grad_reduce_by` is "id") and updates those rows and their per-row state in place (see
modules/row_optim.py); no gradient tensor of the table ever exists. Exposed as a TorchRec
`FusedOptimizer`, so it joins `DistributedModelParallel.fused_optimizer`, and its learning
rate can be changed through `param_groups`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torchrec.optim.fused import FusedOptimizer

from torchrec_ext.modules import row_optim
from torchrec_ext.modules.dynamic.rows import DynamicRows, Lookup
from torchrec_ext.ops import dynamic as dyn_ops
from torchrec_ext.ops.batched import one_table


class _FusedRowsLookup(torch.autograd.Function):
    """Pooled lookup of many dynamic tables in one native call; its backward pass computes
    their touched rows' gradients in one call and hands each table's to the optimizer."""

    @staticmethod
    def forward(ctx, owner, keys, looked, rows, offsets, psw, table_bags, poolings, *anchors):
        ctx.owner, ctx.keys, ctx.looked = owner, keys, looked
        ctx.table_bags, ctx.poolings = table_bags, poolings
        ctx.missing = [owner.rows[k].missing_value for k in keys]
        ctx.save_for_backward(rows, offsets, psw)
        return tuple(dyn_ops.dynamic_bags([lk.blocks for lk in looked], rows, offsets, psw, table_bags, poolings,
                                          ctx.missing))

    @staticmethod
    def backward(ctx, *grads):
        rows, offsets, psw = ctx.saved_tensors
        need_psw = psw is not None and ctx.needs_input_grad[5]
        owner = ctx.owner
        stores = [owner.rows[k] for k in ctx.keys]
        if owner.kind == row_optim.SGD and len({id(s) for s in stores}) == len(stores):
            # SGD in the backward pass itself: no gradient rows, one update for all tables
            gpsw = dyn_ops.dynamic_bags_sgd_(
                [lk.blocks for lk in ctx.looked], grads, rows, offsets, psw, ctx.table_bags, ctx.poolings,
                ctx.missing, [lk.real_rows for lk in ctx.looked],
                [owner.reduce_by.get(k, "sum") == "id" for k in ctx.keys], owner.param_groups[0]["lr"],
                [s.meta["updated"] for s in stores], [s.step for s in stores], need_psw)
        else:
            urows, rgrads, counts, gpsw = dyn_ops.dynamic_bags_backward(
                grads, [lk.blocks for lk in ctx.looked], rows, offsets, psw, ctx.table_bags, ctx.poolings,
                ctx.missing, need_psw)
            for key, store, lk, u, g, c in zip(ctx.keys, stores, ctx.looked, urows, rgrads, counts):
                if len(lk.blocks) * store.block_size > lk.real_rows:
                    keep = u < lk.real_rows  # scratch rows (ids not admitted) get no update
                    u, g, c = u[keep], g[keep], c[keep]
                owner.apply(key, u, g, c)
        return (None,) * 5 + (gpsw if need_psw else None, None, None) + (None,) * len(grads)


class DynamicFusedUpdate(FusedOptimizer):
    """SGD, Adagrad, row-wise Adagrad or Adam on the touched rows of each dynamic table."""

    def __init__(self, rows: Mapping[str, DynamicRows], fused_params: Optional[Mapping[str, Any]],
                 where: str, reduce_by: Optional[Mapping[str, str]] = None) -> None:
        fused_params = dict(fused_params or {})
        self.kind = row_optim.row_optimizer_kind(fused_params, where)
        self.hp = row_optim.hyper_parameters(fused_params)
        self.rows: Dict[str, DynamicRows] = dict(rows)
        self.reduce_by = dict(reduce_by or {})
        for store in self.rows.values():
            store.set_optimizer_state(row_optim.state_widths(self.kind, store.dim))
        # One empty tensor per table stands for its rows in TorchRec's keyed-optimizer API;
        # the per-row state lives with the rows (and in the tables' state dict).
        self._anchors = {k: torch.empty(0, requires_grad=True) for k in self.rows}
        group = {"params": list(self._anchors.values()), "lr": self.hp["learning_rate"], "optimizer": self.kind}
        group.update({k: v for k, v in self.hp.items() if k != "learning_rate"})
        super().__init__(dict(self._anchors), {a: {} for a in self._anchors.values()}, [group])

    def lookup(self, key: str, looked: Lookup, offsets, per_sample_weights, pooling: int) -> torch.Tensor:
        """Pooled rows of one table, updated in backward."""
        return self.lookup_batch([key], [looked], looked.rows, offsets, per_sample_weights, one_table(offsets),
                                 [pooling])[0]

    def lookup_batch(self, keys: Sequence[str], looked: Sequence[Lookup], rows, offsets, per_sample_weights,
                     table_bags: Sequence[int], poolings: Sequence[int]) -> List[torch.Tensor]:
        """Pooled rows of many tables in one call (table t: bags table_bags[t] ..
        table_bags[t + 1] of offsets, `rows` holding every table's rows), updated in backward."""
        return list(_FusedRowsLookup.apply(self, list(keys), list(looked), rows, offsets, per_sample_weights,
                                           list(table_bags), list(poolings), *[self._anchors[k] for k in keys]))

    @torch.no_grad()
    def apply(self, key: str, urows: torch.Tensor, grads: torch.Tensor, counts: torch.Tensor) -> None:
        if urows.numel() == 0:
            return
        store = self.rows[key]
        if self.reduce_by.get(key, "sum") == "id":
            grads = grads / counts.clamp(min=1).unsqueeze(1).to(grads.dtype)
        hp = {**self.hp, "learning_rate": self.param_groups[0]["lr"]}
        if self.kind == row_optim.SGD:
            store.add_to_rows(urows, grads, -hp["learning_rate"])
            return
        values, state = row_optim.update(self.kind, store.values(urows), grads, store.state(urows), hp)
        store.write(urows, values, state)

    def step(self, closure: Any = None) -> None:
        pass  # the update ran in backward

    def zero_grad(self, set_to_none: bool = False) -> None:
        pass
