"""The fused (in-backward) optimizer of dynamic tables, unsharded and sharded alike.

The backward pass of a lookup computes the gradient of the rows the batch touched
(duplicates summed, as FBGEMM's EXACT_* optimizers do; or averaged per id when the table's
`grad_reduce_by` is "id") and updates those rows and their per-row state in place (see
modules/row_optim.py); no gradient tensor of the table ever exists. Exposed as a TorchRec
`FusedOptimizer`, so it joins `DistributedModelParallel.fused_optimizer`, and its learning
rate can be changed through `param_groups`.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
from torchrec.optim.fused import FusedOptimizer

from torchrec_ext.modules import row_optim
from torchrec_ext.modules.dynamic_rows import DynamicRows, Lookup


def check_dynamic_optimizer(fused_params: Optional[Mapping[str, Any]], where: str) -> str:
    return row_optim.row_optimizer_kind(fused_params, where)


class _FusedRowsLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, owner, key, looked, offsets, psw, pooling):
        store = owner.rows[key]
        ctx.owner, ctx.key, ctx.pooling, ctx.looked = owner, key, pooling, looked
        ctx.save_for_backward(offsets, psw)
        return store.pool_detached(looked, offsets, psw, pooling)

    @staticmethod
    def backward(ctx, grad_output):
        offsets, psw = ctx.saved_tensors
        need_psw = psw is not None and ctx.needs_input_grad[5]
        store = ctx.owner.rows[ctx.key]
        by_id = ctx.owner.reduce_by.get(ctx.key, "sum") == "id"
        urows, grads, counts, gpsw = store.backward(grad_output, ctx.looked, offsets, psw, ctx.pooling, need_psw,
                                                    need_counts=by_id)
        ctx.owner.apply(ctx.key, urows, grads, counts)
        return None, None, None, None, None, gpsw if need_psw else None, None


class DynamicFusedUpdate(FusedOptimizer):
    """SGD, Adagrad, row-wise Adagrad or Adam on the touched rows of each dynamic table."""

    def __init__(self, rows: Mapping[str, DynamicRows], fused_params: Optional[Mapping[str, Any]],
                 where: str, reduce_by: Optional[Mapping[str, str]] = None) -> None:
        fused_params = dict(fused_params or {})
        self.kind = check_dynamic_optimizer(fused_params, where)
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
        return _FusedRowsLookup.apply(self._anchors[key], self, key, looked, offsets, per_sample_weights, pooling)

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
