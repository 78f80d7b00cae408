"""Python layer of the dynamic-table ops: fake kernels, and autograd for the pooled lookup.

The index ops (hash_index_*) mutate a table and are driven by `HashTable`; the row
ops read and write a table's blocks. Schemas: csrc/ops.cpp.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from torchrec_ext.ops import _native
from torchrec_ext.ops.batched import bag_counts, one_table

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


@torch.library.register_fake("torchrec_ext::hash_index_lookup_")
def _lookup_fake(slot_keys, slot_rows, keys, key_ends, last_seen, counts, steps):
    return torch.empty_like(keys)


@torch.library.register_fake("torchrec_ext::dynamic_bags_forward")
def _forward_fake(blocks, table_blocks, rows, offsets, per_sample_weights, table_bags, poolings, missing_values):
    return [rows.new_empty((n, blocks[table_blocks[t]].shape[1]), dtype=torch.float32)
            for t, n in enumerate(bag_counts(table_bags))]


@torch.library.register_fake("torchrec_ext::dynamic_bags_backward")
def _backward_fake(grad_outputs, blocks, table_blocks, rows, offsets, per_sample_weights, table_bags, poolings,
                   missing_values, psw_grad):
    ctx = torch.library.get_ctx()
    urows, grads, counts = [], [], []
    for t in range(len(poolings)):
        u = ctx.new_dynamic_size()
        urows.append(rows.new_empty((u,)))
        grads.append(rows.new_empty((u, blocks[table_blocks[t]].shape[1]), dtype=torch.float32))
        counts.append(rows.new_empty((u,)))
    n = rows.shape[0] if psw_grad else 0
    return urows, grads, counts, rows.new_empty((n,), dtype=torch.float32)


@torch.library.register_fake("torchrec_ext::dynamic_bags_sgd_")
def _sgd_fake(blocks, table_blocks, grad_outputs, rows, offsets, per_sample_weights, table_bags, poolings,
              missing_values, real_rows, mean_by_id, lr, updated, steps, psw_grad):
    return rows.new_empty((rows.shape[0] if psw_grad else 0,), dtype=torch.float32)


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


def flat_blocks(blocks_per_table: Sequence[Sequence[torch.Tensor]]) -> Tuple[List[torch.Tensor], List[int]]:
    """(every table's blocks in one list, table_blocks: where each table's run starts and ends)."""
    flat, ends = [], [0]
    for blocks in blocks_per_table:
        flat.extend(blocks)
        ends.append(len(flat))
    return flat, ends


def dynamic_bags(blocks_per_table: Sequence[Sequence[torch.Tensor]], rows: torch.Tensor, offsets: torch.Tensor,
                 per_sample_weights: Optional[torch.Tensor], table_bags: Sequence[int], poolings: Sequence[int],
                 missing_values: Sequence[float]) -> List[torch.Tensor]:
    """Pooled rows of many tables in one call (no autograd): table t pools bags
    table_bags[t] .. table_bags[t + 1] of `offsets` over its blocks; one float32
    [bags, dim] per table."""
    flat, ends = flat_blocks(blocks_per_table)
    return list(_ops.dynamic_bags_forward(flat, ends, rows, offsets, per_sample_weights, list(table_bags),
                                          list(poolings), [float(m) for m in missing_values]))


def dynamic_bags_backward(grad_outputs: Sequence[torch.Tensor], blocks_per_table: Sequence[Sequence[torch.Tensor]],
                          rows: torch.Tensor, offsets: torch.Tensor, per_sample_weights: Optional[torch.Tensor],
                          table_bags: Sequence[int], poolings: Sequence[int], missing_values: Sequence[float],
                          psw_grad: bool):
    """Per table: (unique rows touched, their gradients, positions per row); then the
    per-sample-weight gradient (or empty)."""
    flat, ends = flat_blocks(blocks_per_table)
    urows, grads, counts, gpsw = _ops.dynamic_bags_backward(
        [g.contiguous() for g in grad_outputs], flat, ends, rows, offsets, per_sample_weights, list(table_bags),
        list(poolings), [float(m) for m in missing_values], psw_grad)
    return list(urows), list(grads), list(counts), gpsw


def dynamic_bags_sgd_(blocks_per_table: Sequence[Sequence[torch.Tensor]], grad_outputs: Sequence[torch.Tensor],
                      rows: torch.Tensor, offsets: torch.Tensor, per_sample_weights: Optional[torch.Tensor],
                      table_bags: Sequence[int], poolings: Sequence[int], missing_values: Sequence[float],
                      real_rows: Sequence[int], mean_by_id: Sequence[bool], lr: float,
                      updated: Sequence[torch.Tensor], steps: Sequence[int], psw_grad: bool) -> torch.Tensor:
    """The backward pass of `dynamic_bags` fused with SGD, in place: table t's touched rows
    below real_rows[t] step by -lr * gradient (averaged over the row's positions where
    mean_by_id[t]) and get updated[t][row] = steps[t]. Returns the per-sample-weight
    gradient (taken before the update) or empty. A row must not belong to two tables of
    the call (tables sharing rows update one at a time)."""
    flat, ends = flat_blocks(blocks_per_table)
    return _ops.dynamic_bags_sgd_(flat, ends, [g.contiguous() for g in grad_outputs], rows, offsets,
                                  per_sample_weights, list(table_bags), list(poolings),
                                  [float(m) for m in missing_values], [int(r) for r in real_rows],
                                  [int(bool(m)) for m in mean_by_id], float(lr), list(updated),
                                  [int(s) for s in steps], psw_grad)


class _DenseBlockGrad(torch.autograd.Function):
    """Pooled lookup whose blocks receive dense gradients (unfused training, tests)."""

    @staticmethod
    def forward(ctx, rows, offsets, psw, pooling, missing_value, *blocks):
        ctx.save_for_backward(rows, offsets, psw, *blocks)
        ctx.pooling, ctx.missing = pooling, missing_value
        return dynamic_bags([blocks], rows, offsets, psw, one_table(offsets), [pooling], [missing_value])[0]

    @staticmethod
    def backward(ctx, grad_output):
        rows, offsets, psw, *blocks = ctx.saved_tensors
        need_psw = psw is not None and ctx.needs_input_grad[2]
        (urows,), (grads,), _, gpsw = dynamic_bags_backward([grad_output], [blocks], rows, offsets, psw,
                                                            one_table(offsets), [ctx.pooling], [ctx.missing],
                                                            need_psw)
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
    return dynamic_bags([blocks], rows, offsets, per_sample_weights, one_table(offsets), [pooling],
                        [missing_value])[0]
