"""Per-row optimizer math of dynamic tables (FBGEMM's TBE semantics, on touched rows only).

Every row carries its own state next to its values; an update reads the touched rows'
values and state, and writes both back:
  sgd              w -= lr * g
  adagrad          s += g^2;          w -= lr * g / (sqrt(s) + eps)
  rowwise_adagrad  m += mean_j g^2;   w -= lr * g / (sqrt(m) + eps)
  adam             t += 1; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
                   w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + lr * wd * w
(t is the row's own step: a row's bias correction counts the steps that touched it.)
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType

SGD, ADAGRAD, ROWWISE_ADAGRAD, ADAM = "sgd", "adagrad", "rowwise_adagrad", "adam"

KINDS = {
    EmbOptimType.SGD: SGD,
    EmbOptimType.EXACT_SGD: SGD,
    EmbOptimType.EXACT_ADAGRAD: ADAGRAD,
    EmbOptimType.EXACT_ROWWISE_ADAGRAD: ROWWISE_ADAGRAD,
    EmbOptimType.ROWWISE_ADAGRAD: ROWWISE_ADAGRAD,
    EmbOptimType.ADAM: ADAM,
}

DEFAULTS = {"learning_rate": 0.01, "eps": 1.0e-8, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0}


def optimizer_kind_of(fused_params: Optional[Mapping[str, Any]], where: str,
                      kinds: Mapping[EmbOptimType, str] = KINDS, tables: str = "") -> str:
    """The kind of `fused_params["optimizer"]` (default EXACT_SGD), if `kinds` has it."""
    opt = (fused_params or {}).get("optimizer", EmbOptimType.EXACT_SGD)
    if isinstance(opt, str):
        opt = EmbOptimType(opt)
    if opt not in kinds:
        raise ValueError(f"{where}: fused optimizer {opt} is not supported{tables}; use one of "
                         f"{sorted({o.value for o in kinds})}")
    return kinds[opt]


def row_optimizer_kind(fused_params: Optional[Mapping[str, Any]], where: str) -> str:
    return optimizer_kind_of(fused_params, where, KINDS, " for dynamic tables")


def supported_optimizer_kind(fused_params: Optional[Mapping[str, Any]], where: str,
                             allowed: Iterable[str]) -> str:
    """The kind of `fused_params["optimizer"]`, if it is one of `allowed` (a table kind's
    `optimizers`); else a ValueError naming `where` and the supported optimizers."""
    allowed = set(allowed)
    return optimizer_kind_of(fused_params, where, {o: k for o, k in KINDS.items() if k in allowed})


def state_widths(kind: str, dim: int) -> Dict[str, int]:
    """Per-row state tensors of an optimizer: name -> columns. "per_row" ones are not
    split by column-wise plans (each column shard keeps its own, as FBGEMM does)."""
    return {SGD: {}, ADAGRAD: {"sum": dim}, ROWWISE_ADAGRAD: {"momentum1": 1},
            ADAM: {"exp_avg": dim, "exp_avg_sq": dim, "step": 1}}[kind]


PER_ROW_STATES = ("momentum1", "step")


def dense_state_bytes(kind: str, rows: int, cols: int, elem_size: int) -> int:
    """Bytes of a fused optimizer's state for a [rows, cols] tensor of fixed shape."""
    if kind == SGD:
        return 0
    if kind == ADAGRAD:
        return rows * cols * elem_size
    if kind == ROWWISE_ADAGRAD:
        return rows * 4
    raise ValueError(f"optimizer {kind!r} keeps no dense state for fixed-size tables")


def hyper_parameters(fused_params: Optional[Mapping[str, Any]]) -> Dict[str, float]:
    fused_params = fused_params or {}
    return {k: float(fused_params.get(k, v)) for k, v in DEFAULTS.items()}


@torch.no_grad()
def update(kind: str, w: torch.Tensor, g: torch.Tensor, state: Dict[str, torch.Tensor],
           hp: Mapping[str, float]):
    """New values and state of the touched rows ([U, dim] float32 each)."""
    lr, eps = hp["learning_rate"], hp["eps"]
    if kind == SGD:
        return w - lr * g, state
    if kind == ADAGRAD:
        s = state["sum"] + g * g
        return w - lr * g / (s.sqrt() + eps), {"sum": s}
    if kind == ROWWISE_ADAGRAD:
        m = state["momentum1"] + (g * g).mean(dim=1, keepdim=True)
        return w - lr * g / (m.sqrt() + eps), {"momentum1": m}
    b1, b2, wd = hp["beta1"], hp["beta2"], hp["weight_decay"]
    t = state["step"] + 1
    m = b1 * state["exp_avg"] + (1 - b1) * g
    v = b2 * state["exp_avg_sq"] + (1 - b2) * g * g
    m_hat = m / (1 - b1 ** t)
    v_hat = v / (1 - b2 ** t)
    new_w = w - lr * (m_hat / (v_hat.sqrt() + eps)) - lr * wd * w
    return new_w, {"exp_avg": m, "exp_avg_sq": v, "step": t}
