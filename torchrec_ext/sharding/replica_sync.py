"""Keeps state pieces that every rank holds (a row-wise QR table's small partitions) equal.

Each rank's backward pass produces a gradient for its replica from the ids routed to it.
The replicas' gradients are summed across ranks once per backward pass, at its end (an
autograd engine callback), in one fixed order, on a process group of their own: a
collective issued mid-backward on TorchRec's group would interleave with TorchRec's own
asynchronous collectives in a rank-dependent order and deadlock.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.distributed as dist


class ReplicaGradSync:
    def __init__(self, pg: dist.ProcessGroup) -> None:
        self._pg = pg
        self._pieces: List[Tuple[str, object, int]] = []  # (key, local shard, piece index)
        self._pending: Dict[str, torch.Tensor] = {}
        self._queued = False

    def register(self, key: str, shard, index: int) -> None:
        self._pieces.append((key, shard, index))
        self._pieces.sort(key=lambda p: p[0])

    def add(self, key: str, rows, grad: torch.Tensor, like: torch.Tensor) -> None:
        """Called from a backward pass: this rank's gradient of one replicated piece."""
        dense = grad if rows is None else torch.zeros_like(like).index_copy_(0, rows, grad)
        if key in self._pending:
            self._pending[key] += dense
        else:
            self._pending[key] = dense
        if not self._queued:
            torch.autograd.Variable._execution_engine.queue_callback(self._flush)
            self._queued = True

    @torch.no_grad()
    def _flush(self) -> None:
        pending, self._pending, self._queued = self._pending, {}, False
        for key, shard, i in self._pieces:  # every rank holds the same pieces, same order
            weight = shard.weights[i]
            grad = pending.get(key)
            if grad is None:
                grad = torch.zeros_like(weight)
            dist.all_reduce(grad, group=self._pg)
            shard.optimizer.apply(weight, grad)
