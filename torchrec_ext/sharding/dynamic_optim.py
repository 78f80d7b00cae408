"""The fused (in-backward) optimizer of dynamic tables, unsharded and sharded alike.

The backward pass of a lookup computes the gradient of the rows the batch touched
(duplicates summed, as FBGEMM's EXACT_* optimizers do) and updates those rows in place;
no gradient tensor of the table ever exists. Exposed as a TorchRec `FusedOptimizer`, so it
joins `DistributedModelParallel.fused_optimizer` and its learning rate can be changed.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
from torchrec.optim.fused import FusedOptimizer

from torchrec_ext.modules.dynamic_rows import DynamicRows
from torchrec_ext.sharding.fused_optim import DEFAULT_LR, SGD, optimizer_kind


class _FusedRowsLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchor, owner, key, rows, offsets, psw, pooling):
        store = owner.rows[key]
        ctx.owner, ctx.key, ctx.pooling = owner, key, pooling
        ctx.save_for_backward(rows, offsets, psw)
        return store.pool_detached(rows, offsets, psw, pooling)

    @staticmethod
    def backward(ctx, grad_output):
        rows, offsets, psw = ctx.saved_tensors
        need_psw = psw is not None and ctx.needs_input_grad[5]
        store = ctx.owner.rows[ctx.key]
        urows, grads, gpsw = store.backward(grad_output, rows, offsets, psw, ctx.pooling, need_psw)
        ctx.owner.apply(ctx.key, urows, grads)
        return None, None, None, None, None, gpsw if need_psw else None, None


def check_dynamic_optimizer(fused_params: Optional[Mapping[str, Any]], where: str) -> str:
    kind = optimizer_kind(fused_params, where)
    if kind != SGD:
        raise ValueError(f"{where}: dynamic tables train with the SGD fused optimizer "
                         f"(EmbOptimType.EXACT_SGD); {kind} is not supported for them yet")
    return kind


class DynamicFusedUpdate(FusedOptimizer):
    """SGD on the touched rows of each dynamic table (per-row-state optimizers: not yet)."""

    def __init__(self, rows: Mapping[str, DynamicRows], fused_params: Optional[Mapping[str, Any]],
                 where: str) -> None:
        fused_params = dict(fused_params or {})
        kind = check_dynamic_optimizer(fused_params, where)
        self.rows: Dict[str, DynamicRows] = dict(rows)
        # One empty tensor per table stands for its rows in TorchRec's keyed-optimizer API.
        self._anchors = {k: torch.empty(0, requires_grad=True) for k in self.rows}
        lr = float(fused_params.get("learning_rate", DEFAULT_LR))
        groups = [{"params": list(self._anchors.values()), "lr": lr, "optimizer": kind}]
        super().__init__(dict(self._anchors), {a: {} for a in self._anchors.values()}, groups)

    def lookup(self, key: str, rows, offsets, per_sample_weights, pooling: int) -> torch.Tensor:
        return _FusedRowsLookup.apply(self._anchors[key], self, key, rows, offsets,
                                      per_sample_weights, pooling)

    @torch.no_grad()
    def apply(self, key: str, urows: torch.Tensor, grads: torch.Tensor) -> None:
        self.rows[key].add_to_rows(urows, grads, -self.param_groups[0]["lr"])

    def step(self, closure: Any = None) -> None:
        pass  # the update ran in backward

    def zero_grad(self, set_to_none: bool = False) -> None:
        pass
