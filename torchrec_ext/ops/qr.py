"""Python layer of the QR / compositional table ops: fake kernels, autograd, typed calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from torchrec_ext.ops import _native
from torchrec_ext.ops.batched import bag_counts, flat_layouts, one_table, register_batched_autograd

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

    def args(self) -> List[int]:
        """The layout as the native ops read it: (k, op, id_offset, out_dim), then k
        divisors, moduli, row_starts and out_cols."""
        return [len(self.divisors), self.op, self.id_offset, self.out_dim, *self.divisors, *self.moduli,
                *self.row_starts, *self.out_cols]


def _tables(layouts: Sequence[int]):
    """(pieces, out_dim) of each table of a flat layout list."""
    out, at = [], 0
    while at < len(layouts):
        k = layouts[at]
        out.append((k, layouts[at + 3]))
        at += 4 + 4 * k
    return out


@torch.library.register_fake("torchrec_ext::qr_bags_forward")
def _forward_fake(weights, indices, offsets, per_sample_weights, table_bags, poolings, layouts):
    return [weights[0].new_empty((n, dim)) for n, (_, dim) in zip(bag_counts(table_bags), _tables(layouts))]


@torch.library.register_fake("torchrec_ext::qr_bags_backward")
def _backward_fake(grad_outputs, weights, indices, offsets, per_sample_weights, table_bags, poolings,
                   layouts, psw_grad):
    ctx = torch.library.get_ctx()
    rows, grads = [], []
    for w in weights:
        touched = ctx.new_dynamic_size()
        rows.append(indices.new_empty((touched,)))
        grads.append(w.new_empty((touched, w.shape[1])))
    n = indices.shape[0] if psw_grad else 0
    return rows, grads, indices.new_empty((n,), dtype=torch.float32)


def _dense_weight_grads(grad_outputs, weights, *args):
    rows, grads, gpsw = _ops.qr_bags_backward(grad_outputs, weights, *args)
    # Autograd wants dense gradients; the sharded kernels use (rows, grads) directly.
    return [torch.zeros_like(w).index_copy_(0, r, g) for w, r, g in zip(weights, rows, grads)], gpsw


register_batched_autograd("torchrec_ext::qr_bags_forward", _dense_weight_grads)


def qr_bags(weights: Sequence[torch.Tensor], indices: torch.Tensor, offsets: torch.Tensor,
            per_sample_weights: Optional[torch.Tensor], table_bags: Sequence[int],
            poolings: Sequence[int], layouts: Sequence[QRShardLayout]) -> List[torch.Tensor]:
    """Pooled lookups of many QR shards in one call. `weights` holds every shard's
    partition pieces, shard after shard; shard t pools bags table_bags[t] ..
    table_bags[t + 1] of `offsets`. Differentiable in the weights and the sample weights."""
    return _ops.qr_bags_forward(list(weights), indices, offsets, per_sample_weights, list(table_bags),
                                list(poolings), flat_layouts(layouts))


def qr_bags_backward(grad_outputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                     indices: torch.Tensor, offsets: torch.Tensor,
                     per_sample_weights: Optional[torch.Tensor], table_bags: Sequence[int],
                     poolings: Sequence[int], layouts: Sequence[QRShardLayout], psw_grad: bool
                     ) -> Tuple[List[torch.Tensor], List[torch.Tensor], torch.Tensor]:
    """Per partition piece (in `weights` order): (touched local rows, their gradient
    rows); then d/d(per_sample_weights) or empty."""
    rows, grads, gpsw = _ops.qr_bags_backward(list(grad_outputs), list(weights), indices, offsets,
                                              per_sample_weights, list(table_bags), list(poolings),
                                              flat_layouts(layouts), psw_grad)
    return list(rows), list(grads), gpsw


def qr_bag(weights: Sequence[torch.Tensor], indices: torch.Tensor, offsets: torch.Tensor,
           per_sample_weights: Optional[torch.Tensor], pooling: int,
           layout: QRShardLayout) -> torch.Tensor:
    """Pooled lookup of one QR table shard (the one-table form of `qr_bags`)."""
    return qr_bags(weights, indices, offsets, per_sample_weights, one_table(offsets), [pooling], [layout])[0]


def qr_bag_backward(grad_output: torch.Tensor, weights: Sequence[torch.Tensor],
                    indices: torch.Tensor, offsets: torch.Tensor,
                    per_sample_weights: Optional[torch.Tensor], pooling: int,
                    layout: QRShardLayout, psw_grad: bool
                    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], torch.Tensor]:
    """One-table `qr_bags_backward`."""
    return qr_bags_backward([grad_output], weights, indices, offsets, per_sample_weights, one_table(offsets),
                            [pooling], [layout], psw_grad)
