"""Python layer of the dynamic-table ops: fake kernels, and autograd for the pooled lookup.

The index ops (hash_index_*) mutate a table and are driven by `HashTable`; the row
ops read and write a table's blocks. Schemas: csrc/ops.cpp.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from torchrec_ext.ops import _native

_native.load()
_ops = torch.ops.torchrec_ext


@torch.library.register_fake("torchrec_ext::hash_index_find")
def _find_fake(slot_keys, slot_rows, keys):
    return torch.empty_like(keys)


@torch.library.register_fake("torchrec_ext::hash_index_insert_")
def _insert_fake(slot_keys, slot_rows, keys, row_pool, pool_used):
    return torch.empty_like(keys), torch.empty_like(keys, dtype=torch.bool)


@torch.library.register_fake("torchrec_ext::hash_index_erase_")
def _erase_fake(slot_keys, slot_rows, keys):
    return torch.empty_like(keys)


@torch.library.register_fake("torchrec_ext::hash_index_rehash")
def _rehash_fake(slot_keys, slot_rows, capacity):
    return slot_keys.new_empty((capacity,)), slot_rows.new_empty((capacity,))


@torch.library.register_fake("torchrec_ext::dynamic_key_hash")
def _key_hash_fake(keys):
    return torch.empty_like(keys)


@torch.library.register_fake("torchrec_ext::dynamic_bag_forward")
def _forward_fake(blocks, rows, offsets, per_sample_weights, pooling, missing_value):
    return blocks[0].new_empty((offsets.shape[0] - 1, blocks[0].shape[1]), dtype=torch.float32)


@torch.library.register_fake("torchrec_ext::dynamic_bag_backward")
def _backward_fake(grad_output, blocks, rows, offsets, per_sample_weights, pooling, missing_value, psw_grad):
    ctx = torch.library.get_ctx()
    u = ctx.new_dynamic_size()
    dim = blocks[0].shape[1]
    n = rows.shape[0] if psw_grad else 0
    return rows.new_empty((u,)), grad_output.new_empty((u, dim), dtype=torch.float32), \
        grad_output.new_empty((n,), dtype=torch.float32)


@torch.library.register_fake("torchrec_ext::block_rows_gather")
def _gather_fake(blocks, rows):
    return blocks[0].new_empty((rows.shape[0], blocks[0].shape[1]), dtype=torch.float32)


@torch.library.register_fake("torchrec_ext::block_rows_scatter_")
def _scatter_fake(blocks, rows, values, alpha, accumulate):
    return None


@torch.library.register_fake("torchrec_ext::block_rows_init_")
def _init_fake(blocks, rows, keys, kind, a, b, seed, col_offset):
    return None


def key_hash(keys: torch.Tensor) -> torch.Tensor:
    """A non-negative 63-bit hash of each int64 key (the same on every device)."""
    return _ops.dynamic_key_hash(keys)


class _DenseBlockGrad(torch.autograd.Function):
    """Pooled lookup whose blocks receive dense gradients (unfused training, tests)."""

    @staticmethod
    def forward(ctx, rows, offsets, psw, pooling, missing_value, *blocks):
        ctx.save_for_backward(rows, offsets, psw, *blocks)
        ctx.pooling, ctx.missing = pooling, missing_value
        return _ops.dynamic_bag_forward(list(blocks), rows, offsets, psw, pooling, missing_value)

    @staticmethod
    def backward(ctx, grad_output):
        rows, offsets, psw, *blocks = ctx.saved_tensors
        need_psw = psw is not None and ctx.needs_input_grad[2]
        urows, grads, gpsw = _ops.dynamic_bag_backward(grad_output, blocks, rows, offsets, psw,
                                                       ctx.pooling, ctx.missing, need_psw)
        bs = blocks[0].shape[0]
        dense: List[Optional[torch.Tensor]] = []
        for i, b in enumerate(blocks):
            if not ctx.needs_input_grad[5 + i]:
                dense.append(None)
                continue
            pick = (urows // bs) == i
            g = torch.zeros(b.shape, dtype=torch.float32, device=b.device)
            g.index_copy_(0, urows[pick] % bs, grads[pick])
            dense.append(g.to(b.dtype))
        return (None, None, gpsw if need_psw else None, None, None, *dense)


def dynamic_bag(blocks: List[torch.Tensor], rows: torch.Tensor, offsets: torch.Tensor,
                per_sample_weights: Optional[torch.Tensor], pooling: int,
                missing_value: float = 0.0) -> torch.Tensor:
    """Pooled rows ([bags, dim], float32); differentiable in the blocks and weights."""
    if torch.is_grad_enabled() and (any(b.requires_grad for b in blocks) or
                                    (per_sample_weights is not None and per_sample_weights.requires_grad)):
        return _DenseBlockGrad.apply(rows, offsets, per_sample_weights, pooling, missing_value, *blocks)
    return _ops.dynamic_bag_forward(blocks, rows, offsets, per_sample_weights, pooling, missing_value)
