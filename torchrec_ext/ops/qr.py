"""Python layer of the QR / compositional table ops: fake kernels, autograd, typed calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from torchrec_ext.ops import _native

_native.load()
_ops = torch.ops.torchrec_ext

OPS = {"mult": 0, "add": 1, "concat": 2}


@dataclass(frozen=True)
class QRShardLayout:
    """How a shard's partition pieces make its output columns: see csrc/qr_layout.h."""

    op: int
    divisors: Tuple[int, ...]
    moduli: Tuple[int, ...]  # 0: no modulo (a quotient)
    row_starts: Tuple[int, ...]
    out_cols: Tuple[int, ...]
    id_offset: int
    out_dim: int

    def args(self) -> tuple:
        return (self.op, list(self.divisors), list(self.moduli), list(self.row_starts),
                list(self.out_cols), self.id_offset)


@torch.library.register_fake("torchrec_ext::qr_bag_forward")
def _forward_fake(weights, indices, offsets, per_sample_weights, pooling, op, divisors, moduli,
                  row_starts, out_cols, id_offset, out_dim):
    return weights[0].new_empty((offsets.shape[0] - 1, out_dim))


@torch.library.register_fake("torchrec_ext::qr_bag_backward")
def _backward_fake(grad_output, weights, indices, offsets, per_sample_weights, pooling, op,
                   divisors, moduli, row_starts, out_cols, id_offset, psw_grad):
    ctx = torch.library.get_ctx()
    rows, grads = [], []
    for w in weights:
        touched = ctx.new_dynamic_size()
        rows.append(indices.new_empty((touched,)))
        grads.append(w.new_empty((touched, w.shape[1])))
    n = indices.shape[0] if psw_grad else 0
    return rows, grads, weights[0].new_empty((n,), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    weights, indices, offsets, psw, pooling, *layout = inputs
    ctx.save_for_backward(indices, offsets, psw, *weights)
    ctx.pooling = pooling
    ctx.layout = tuple(layout[:-1])  # out_dim is implied by grad_output


def _backward(ctx, grad_output):
    indices, offsets, psw, *weights = ctx.saved_tensors
    need_psw = psw is not None and ctx.needs_input_grad[3]
    rows, grads, gpsw = _ops.qr_bag_backward(
        grad_output, weights, indices, offsets, psw, ctx.pooling, *ctx.layout, need_psw
    )
    # Autograd wants dense gradients; the sharded kernels use (rows, grads) directly.
    dense = [torch.zeros_like(w).index_copy_(0, r, g) for w, r, g in zip(weights, rows, grads)]
    return (dense, None, None, gpsw.to(psw.dtype) if need_psw else None,
            None, *([None] * (len(ctx.layout) + 1)))


torch.library.register_autograd(
    "torchrec_ext::qr_bag_forward", _backward, setup_context=_setup_context
)


def qr_bag(weights: Sequence[torch.Tensor], indices: torch.Tensor, offsets: torch.Tensor,
           per_sample_weights: Optional[torch.Tensor], pooling: int,
           layout: QRShardLayout) -> torch.Tensor:
    """Pooled lookup of a QR table shard; differentiable in the weights and the sample weights."""
    return _ops.qr_bag_forward(list(weights), indices, offsets, per_sample_weights, pooling,
                               *layout.args(), layout.out_dim)


def qr_bag_backward(grad_output: torch.Tensor, weights: Sequence[torch.Tensor],
                    indices: torch.Tensor, offsets: torch.Tensor,
                    per_sample_weights: Optional[torch.Tensor], pooling: int,
                    layout: QRShardLayout, psw_grad: bool
                    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], torch.Tensor]:
    """Per partition piece: (touched local rows, their gradient rows); then d/d(weights)."""
    return _ops.qr_bag_backward(grad_output, list(weights), indices, offsets, per_sample_weights,
                                pooling, *layout.args(), psw_grad)
