"""Python layer of the hashed-table ops: fake kernels, autograd, and a typed call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from torchrec_ext.ops import _native

_native.load()
_ops = torch.ops.torchrec_ext


@dataclass(frozen=True)
class HashedShardLayout:
    """Where a shard of a hashed table sits: see csrc/hashed_layout.h."""

    mode: int  # 0 element, 1 block
    chunk: int
    rows_per_region: int
    slots: int
    id_offset: int = 0
    col_offset: int = 0
    seed: int = 0
    signed: bool = False

    def args(self) -> tuple:
        return (self.mode, self.chunk, self.rows_per_region, self.slots, self.id_offset,
                self.col_offset, self.seed, self.signed)


@torch.library.register_fake("torchrec_ext::hashed_bag_forward")
def _forward_fake(weight, indices, offsets, per_sample_weights, pooling, *layout):
    return weight.new_empty((offsets.shape[0] - 1, weight.shape[1]))


@torch.library.register_fake("torchrec_ext::hashed_bag_backward")
def _backward_fake(grad_output, weight, indices, offsets, per_sample_weights, pooling, *rest):
    psw_grad = rest[-1]
    n = indices.shape[0] if psw_grad else 0
    return torch.empty_like(weight), weight.new_empty((n,), dtype=torch.float32)


@torch.library.register_fake("torchrec_ext::hashed_bag_sgd_")
def _sgd_fake(weight, grad_output, indices, offsets, per_sample_weights, pooling, *rest):
    psw_grad = rest[-1]
    n = indices.shape[0] if psw_grad else 0
    return weight.new_empty((n,), dtype=torch.float32)


@torch.library.register_fake("torchrec_ext::coord_uniform_")
def _coord_uniform_fake(weight, row_offset, col_offset, seed, low, high):
    return weight


def _setup_context(ctx, inputs, output):
    weight, indices, offsets, psw, pooling, *layout = inputs
    ctx.save_for_backward(weight, indices, offsets, psw)
    ctx.pooling = pooling
    ctx.layout = tuple(layout)


def _backward(ctx, grad_output):
    weight, indices, offsets, psw = ctx.saved_tensors
    need_w, need_psw = ctx.needs_input_grad[0], psw is not None and ctx.needs_input_grad[3]
    gw, gpsw = _ops.hashed_bag_backward(
        grad_output, weight, indices, offsets, psw, ctx.pooling, *ctx.layout, need_psw
    )
    return (gw if need_w else None, None, None, gpsw.to(psw.dtype) if need_psw else None,
            None, *([None] * len(ctx.layout)))


torch.library.register_autograd(
    "torchrec_ext::hashed_bag_forward", _backward, setup_context=_setup_context
)


def hashed_bag(weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
               per_sample_weights: Optional[torch.Tensor], pooling: int,
               layout: HashedShardLayout) -> torch.Tensor:
    """Pooled lookup of a hashed table shard; differentiable in weight and weights."""
    return _ops.hashed_bag_forward(weight, indices, offsets, per_sample_weights, pooling,
                                   *layout.args())


def hashed_bag_backward(grad_output: torch.Tensor, weight: torch.Tensor, indices: torch.Tensor,
                        offsets: torch.Tensor, per_sample_weights: Optional[torch.Tensor],
                        pooling: int, layout: HashedShardLayout, psw_grad: bool):
    return _ops.hashed_bag_backward(grad_output, weight, indices, offsets, per_sample_weights,
                                    pooling, *layout.args(), psw_grad)


def hashed_bag_sgd_(weight: torch.Tensor, grad_output: torch.Tensor, indices: torch.Tensor,
                    offsets: torch.Tensor, per_sample_weights: Optional[torch.Tensor], pooling: int,
                    layout: HashedShardLayout, lr: float, psw_grad: bool) -> torch.Tensor:
    """Backward fused with SGD: `weight -= lr * grad_weight` in place, no dense gradient.
    Returns the per-sample-weight gradient (from the weights before the update) or empty."""
    return _ops.hashed_bag_sgd_(weight, grad_output, indices, offsets, per_sample_weights, pooling,
                                *layout.args(), lr, psw_grad)


def coord_uniform_(weight: torch.Tensor, row_offset: int, col_offset: int, seed: int,
                   low: float, high: float) -> torch.Tensor:
    """Deterministic U(low, high) init from global element coordinates (plan-independent)."""
    if weight.device.type == "meta" or weight.numel() == 0:
        return weight
    with torch.no_grad():
        return _ops.coord_uniform_(weight, row_offset, col_offset, seed, low, high)
