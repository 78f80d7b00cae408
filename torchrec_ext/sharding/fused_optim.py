"""Fused optimizers for torchrec_ext's sharded kernels (the update runs in backward).

Semantics follow FBGEMM's TBE for the same `EmbOptimType`, applied to the rows of each
local shard (for hashed tables: rows of the buffer):
  SGD:              w -= lr * g
  ADAGRAD:          s += g^2;        w -= lr * g / (sqrt(s) + eps)
  ROWWISE_ADAGRAD:  m += mean_j g^2; w -= lr * g / (sqrt(m) + eps)
Duplicate ids are summed before the update (FBGEMM's EXACT_* behaviour).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional

import torch
from torchrec.optim.fused import FusedOptimizer

from torchrec_ext.modules.row_optim import (
    ADAGRAD,
    ADAM,
    DEFAULTS,
    KINDS,
    ROWWISE_ADAGRAD,
    SGD,
    optimizer_kind_of,
    supported_optimizer_kind,
)

# Fixed-size tables keep dense optimizer state: every kind but Adam (per-row steps).
_KINDS = {opt: kind for opt, kind in KINDS.items() if kind != ADAM}

DEFAULT_LR = DEFAULTS["learning_rate"]  # FBGEMM TBE's default learning rate
DEFAULT_EPS = DEFAULTS["eps"]


def optimizer_kind(fused_params: Optional[Mapping[str, Any]], where: str) -> str:
    return optimizer_kind_of(fused_params, where, _KINDS)


class ExtFusedOptimizer(FusedOptimizer):
    """Holds the learning rate and per-row state of one kernel's shards.

    `params` maps "<table>.weight" (suffixed for extra column shards) to the shard;
    state tensors are created next to each shard and keyed the FBGEMM way.
    """

    def __init__(self, params: Dict[str, torch.Tensor], fused_params: Mapping[str, Any], where: str,
                 allowed: Iterable[str] = frozenset(_KINDS.values())):
        self._kind = supported_optimizer_kind(fused_params, where, set(allowed) & set(_KINDS.values()))
        self._eps = float(fused_params.get("eps", DEFAULT_EPS))
        lr = float(fused_params.get("learning_rate", DEFAULT_LR))
        state: Dict[Any, Any] = {}
        for p in params.values():
            if self._kind == ADAGRAD:
                state[p] = {"sum": torch.zeros_like(p)}
            elif self._kind == ROWWISE_ADAGRAD:
                state[p] = {"momentum1": torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)}
            else:
                state[p] = {}
        param_groups: List[Dict[str, Any]] = [
            {"params": list(params.values()), "lr": lr, "optimizer": self._kind, "eps": self._eps}
        ]
        super().__init__(params, state, param_groups)

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def lr(self) -> float:
        return float(self.param_groups[0]["lr"])  # read per step: schedulers change it

    @torch.no_grad()
    def apply(self, param: torch.Tensor, grad: torch.Tensor, rows: Optional[torch.Tensor] = None) -> None:
        """One step for `param` with its (duplicate-summed) gradient.

        rows: the unique rows that `grad` holds (sparse form); None for a dense gradient.
        Untouched rows and their state are left alone either way.
        """
        lr = self.param_groups[0]["lr"]
        if rows is not None and rows.numel() == 0:
            return
        pick = (lambda t: t) if rows is None else (lambda t: t.index_select(0, rows))
        if self._kind == SGD:
            step = grad
        elif self._kind == ADAGRAD:
            s = self.state[param]["sum"]
            s_rows = pick(s).addcmul_(grad, grad)  # in place when dense
            if rows is not None:
                s.index_copy_(0, rows, s_rows)
            step = grad / s_rows.sqrt().add_(self._eps)
        else:
            m = self.state[param]["momentum1"]
            m_rows = pick(m).add_(grad.float().pow(2).mean(dim=1))  # in place when dense
            if rows is not None:
                m.index_copy_(0, rows, m_rows)
            step = grad * (1.0 / (m_rows.sqrt() + self._eps)).to(grad.dtype).unsqueeze(1)
        if rows is None:
            param.add_(step, alpha=-lr)
        else:
            param.index_add_(0, rows, step, alpha=-lr)

    def step(self, closure: Any = None) -> None:
        pass  # the update ran in backward

    def zero_grad(self, set_to_none: bool = False) -> None:
        pass
