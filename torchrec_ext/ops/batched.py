"""What the batched bag ops (hashed_bags_*, qr_bags_*) share: their argument layout
(weights, indices, offsets, per_sample_weights, table_bags, poolings, layouts), the
flattening of per-table layouts, the one-table form, and their autograd."""

from __future__ import annotations

from typing import Callable, List, Sequence

import torch


def flat_layouts(layouts: Sequence) -> List[int]:
    """Per-table layouts (each with `args()`) as the one int list the native ops read."""
    return [v for lay in layouts for v in lay.args()]


def bag_counts(table_bags: Sequence[int]) -> List[int]:
    return [table_bags[t + 1] - table_bags[t] for t in range(len(table_bags) - 1)]


def one_table(offsets: torch.Tensor) -> List[int]:
    """table_bags of a call with one table that owns every bag of `offsets`."""
    return [0, offsets.shape[0] - 1]


def register_batched_autograd(forward_op: str, weight_grads: Callable) -> None:
    """Autograd of a batched forward op. weight_grads(grad_outputs, weights, indices,
    offsets, psw, table_bags, poolings, layouts, need_psw) -> (dense gradient per weight,
    psw gradient or empty)."""

    def setup_context(ctx, inputs, output):
        weights, indices, offsets, psw, table_bags, poolings, layouts = inputs
        ctx.save_for_backward(indices, offsets, psw, *weights)
        ctx.static = (table_bags, poolings, layouts)

    def backward(ctx, grad_outputs):
        indices, offsets, psw, *weights = ctx.saved_tensors
        need_psw = psw is not None and ctx.needs_input_grad[3]
        gw, gpsw = weight_grads([g.contiguous() for g in grad_outputs], weights, indices, offsets, psw,
                                *ctx.static, need_psw)
        return (list(gw), None, None, gpsw.to(psw.dtype) if need_psw else None, None, None, None)

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
